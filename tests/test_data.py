"""The data pipeline on small real data sets built on the fly (and on ../shared/data/landmarks13 when present):
loaders, the split, mean/std, the bad-file report, the pictures and the ``data`` command."""
from __future__ import annotations

import argparse
import io
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from conftest import make_photo  # noqa: E402
from src import data as data_module  # noqa: E402
from src.data import (DataNotFoundError, class_display_name, compute_mean_and_std, denormalize,  # noqa: E402
                      get_data_loaders, load_landmark_data, plot_channel_histograms, stratified_split,
                      visualize_one_batch)
from src.data_cli import add_data_arguments, data_main  # noqa: E402
from src.images import open_image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
N_CLASSES, N_TRAIN, N_TEST = 3, 10, 4  # the tiny_dataset fixture


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Per-image transforms are tiny tensor ops: on a busy 2-core machine torch's thread pool makes them ~10x
    slower (DataLoader workers use one thread each for the same reason). Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_names(samples) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p, _ in samples]


def direct_mean_std(paths, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std the plain way: every downscaled image's pixels in one array, then numpy."""
    pixels = []
    for p in paths:
        img = open_image(p, draft_size=size).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        pixels.append(np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0)
    allpix = np.concatenate(pixels)
    return allpix.mean(0), allpix.std(0)


def write_truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------

def test_loaders_keys_shapes_dtypes_labels(tiny_dataset):
    loaders = get_data_loaders(batch_size=4, num_workers=0, data_dir=tiny_dataset)
    assert set(loaders) == {"train", "valid", "test"}
    n_valid = round(N_TRAIN * 0.2)
    sizes = {"train": N_CLASSES * (N_TRAIN - n_valid), "valid": N_CLASSES * n_valid, "test": N_CLASSES * N_TEST}
    for split, loader in loaders.items():
        ds = loader.dataset
        assert len(ds) == sizes[split]
        assert ds.class_names == [f"{i:02d}.Landmark_{chr(65 + i)}" for i in range(N_CLASSES)]
        assert len(ds.mean) == 3 and len(ds.std) == 3 and all(s > 0 for s in ds.std)
        images, labels = next(iter(loader))
        assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        all_labels = torch.cat([lab for _, lab in loader])
        assert set(all_labels.tolist()) == set(range(N_CLASSES))
    small = get_data_loaders(batch_size=2, num_workers=0, data_dir=tiny_dataset, img_size=96)
    for loader in small.values():
        assert next(iter(loader))[0].shape == (2, 3, 96, 96)


def test_valid_images_are_resized_cropped_and_normalised_with_the_data_sets_stats(tiny_dataset):
    loaders = get_data_loaders(batch_size=64, num_workers=0, data_dir=tiny_dataset)
    ds = loaders["valid"].dataset
    mean, std = compute_mean_and_std(tiny_dataset)
    assert ds.mean == mean and ds.std == std  # the data set's own statistics, not ImageNet's
    images, labels = next(iter(loaders["valid"]))
    # Deterministic: exactly Resize(256) + CenterCrop(224) of the decoded photo, then (x - mean) / std.
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    for i, (path, label) in enumerate(ds.samples):
        expected = (reference(open_image(path)) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        assert torch.allclose(images[i], expected, atol=1e-5)
        assert labels[i] == label
    assert torch.equal(images, next(iter(loaders["valid"]))[0])  # same every time
    per_channel_mean = images.mean(dim=(0, 2, 3))
    per_channel_std = images.std(dim=(0, 2, 3))
    assert per_channel_mean.abs().max() < 0.3, per_channel_mean
    assert ((per_channel_std > 0.6) & (per_channel_std < 1.5)).all(), per_channel_std


def test_train_loader_augments_and_shuffles_reproducibly(tiny_dataset):
    first = [next(iter(get_data_loaders(batch_size=8, num_workers=0, data_dir=tiny_dataset)["train"]))[1]
             for _ in range(2)]
    assert torch.equal(first[0], first[1])  # seeded shuffle: the same order on every run
    ds = get_data_loaders(batch_size=8, num_workers=0, data_dir=tiny_dataset)["train"].dataset
    a, b = ds[0][0], ds[0][0]
    assert a.shape == (3, 224, 224) and not torch.equal(a, b)  # random crop/flip/colour each time


def test_loaders_with_worker_processes(tiny_dataset):
    loaders = get_data_loaders(batch_size=8, num_workers=2, data_dir=tiny_dataset)
    assert sum(len(lab) for _, lab in loaders["test"]) == N_CLASSES * N_TEST


def test_limit_keeps_every_class(tiny_dataset):
    loaders = get_data_loaders(batch_size=4, num_workers=0, data_dir=tiny_dataset, limit=5)
    for split, loader in loaders.items():
        assert len(loader.dataset) == 5
        assert set(loader.dataset.targets) == set(range(N_CLASSES)), split
    assert len(get_data_loaders(num_workers=0, data_dir=tiny_dataset, limit=-1)["train"].dataset) == 24


# ---------------------------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------------------------

def test_split_is_deterministic_and_independent_of_where_the_data_lives(tiny_dataset, tmp_path):
    first = load_landmark_data(tiny_dataset)
    second = load_landmark_data(tiny_dataset)
    assert first.valid == second.valid and first.train == second.train
    moved = Path(shutil.copytree(tiny_dataset, tmp_path / "elsewhere" / "copied_data"))
    third = load_landmark_data(moved)
    assert rel_names(third.valid) == rel_names(first.valid)
    assert rel_names(third.train) == rel_names(first.train)
    other_seed = load_landmark_data(tiny_dataset, seed=7)
    assert rel_names(other_seed.valid) != rel_names(first.valid)  # the seed matters (the check can fail)
    assert not set(rel_names(first.valid)) & set(rel_names(first.train))


def test_split_is_the_same_on_every_machine():
    """A fixed answer (sha1 of folder/file names): no salted hash(), RNG state or absolute path involved."""
    samples = [(Path(f"/any/where/{c:02d}.Landmark_{chr(65 + c)}/img_{i:03d}.jpg"), c)
               for c in range(3) for i in range(10)]
    _, valid = stratified_split(samples, 0.2, seed=42)
    assert rel_names(valid) == ["00.Landmark_A/img_000.jpg", "00.Landmark_A/img_007.jpg",
                                "01.Landmark_B/img_003.jpg", "01.Landmark_B/img_004.jpg",
                                "02.Landmark_C/img_008.jpg", "02.Landmark_C/img_009.jpg"]


def test_split_is_stratified(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "uneven"
    counts = [10, 7, 13, 3]
    for label, n in enumerate(counts):
        for split, k in (("train", n), ("test", 2)):
            folder = root / split / f"{label:02d}.Place_{label}"
            folder.mkdir(parents=True)
            for i in range(k):
                make_photo(folder / f"p{i:02d}.png", label, i, (24, 16), "PNG")
    data = load_landmark_data(root)
    for label, n in enumerate(counts):
        n_valid = sum(1 for _, lab in data.valid if lab == label)
        n_train = sum(1 for _, lab in data.train if lab == label)
        assert n_valid == round(n * 0.2), (label, n_valid)
        assert n_valid + n_train == n
    loaders = get_data_loaders(num_workers=0, data=data)
    assert len(loaders["valid"].dataset) == sum(round(n * 0.2) for n in counts)


# ---------------------------------------------------------------------------------------------------------------
# Mean and std
# ---------------------------------------------------------------------------------------------------------------

def test_mean_std_equals_a_direct_computation_on_the_training_split(tiny_dataset, monkeypatch):
    data = load_landmark_data(tiny_dataset)
    mean, std = compute_mean_and_std(tiny_dataset)
    exp_mean, exp_std = direct_mean_std([p for p, _ in data.train])
    np.testing.assert_allclose(mean, exp_mean, atol=1e-6)
    np.testing.assert_allclose(std, exp_std, atol=1e-6)
    # Not the whole train/ folder, and not test/: the training split only.
    with_valid, _ = direct_mean_std([p for p, _ in data.train + data.valid])
    assert np.abs(np.array(mean) - with_valid).max() > 1e-4
    # With no argument: LANDMARK_DATA names the data, and the answer is the same.
    monkeypatch.setenv("LANDMARK_DATA", str(tiny_dataset))
    assert compute_mean_and_std() == (mean, std)


def test_mean_std_cache_is_used_and_keyed_to_the_training_files(tiny_dataset, monkeypatch):
    mean, std = compute_mean_and_std(tiny_dataset)
    cache_file = load_landmark_data(tiny_dataset).cache_dir / "mean_std.json"
    assert cache_file.exists()

    calls = []
    real = data_module._channel_sums
    monkeypatch.setattr(data_module, "_channel_sums", lambda p, s: calls.append(p) or real(p, s))
    assert compute_mean_and_std(tiny_dataset) == (mean, std)
    assert calls == []  # nothing changed: served from the cache

    # A changed test photo and a changed validation photo do not matter.
    data = load_landmark_data(tiny_dataset)
    Image.new("RGB", (64, 48), (255, 255, 255)).save(data.test[0][0], "JPEG")
    valid_photo = data.valid[0][0]
    Image.new("RGB", (64, 48), (255, 255, 255)).save(valid_photo, Image.open(valid_photo).format)
    assert compute_mean_and_std(tiny_dataset) == (mean, std)
    assert calls == []

    # A new training photo does: the cache is invalidated and the value recomputed.
    folder = tiny_dataset / "train" / "01.Landmark_B"
    for i in range(20):
        new = folder / f"white_{i}.png"
        Image.new("RGB", (64, 48), (255, 255, 255)).save(new)
        if new in [p for p, _ in load_landmark_data(tiny_dataset).train]:
            break
        new.unlink()
    new_mean, new_std = compute_mean_and_std(tiny_dataset)
    assert calls  # recomputed
    assert all(n > m for n, m in zip(new_mean, mean))  # a white photo brightens every channel
    exp_mean, exp_std = direct_mean_std([p for p, _ in load_landmark_data(tiny_dataset).train])
    np.testing.assert_allclose(new_mean, exp_mean, atol=1e-6)
    np.testing.assert_allclose(new_std, exp_std, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Bad files and junk
# ---------------------------------------------------------------------------------------------------------------

def test_bad_files_are_reported_and_left_out_and_junk_ignored(tiny_dataset, caplog):
    cls = tiny_dataset / "train" / "00.Landmark_A"
    write_truncated_jpeg(cls / "truncated.jpg")
    text = cls / "notes.jpg"
    text.write_text("not a photo at all\n")
    empty = tiny_dataset / "test" / "02.Landmark_C" / "empty.png"
    empty.write_bytes(b"")
    for junk in (cls / ".DS_Store", cls / "Thumbs.db", cls / "._img_000.jpg", tiny_dataset / "train" / ".DS_Store"):
        junk.write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    (cls / "README.txt").write_text("photos from the web\n")

    with caplog.at_level(logging.WARNING, logger="src.data"):
        data = load_landmark_data(tiny_dataset)
    bad = {Path(p).name: reason for p, reason in data.bad_files}
    assert set(bad) == {"truncated.jpg", "notes.jpg", "empty.png"}
    assert "truncated" in bad["truncated.jpg"] and "not an image" in bad["notes.jpg"] and "empty" in bad["empty.png"]
    for name in ("truncated.jpg", "notes.jpg", "empty.png"):
        assert any(name in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records), name
    used = {p.name for p, _ in data.train + data.valid + data.test}
    assert not used & {"truncated.jpg", "notes.jpg", "empty.png", ".DS_Store", "Thumbs.db", "._img_000.jpg"}
    assert len(data.train) + len(data.valid) == N_CLASSES * N_TRAIN and len(data.test) == N_CLASSES * N_TEST

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.data"):
        again = load_landmark_data(tiny_dataset)  # checks come from the cache, the report does not go quiet
    assert again.bad_files == data.bad_files
    assert sum("truncated.jpg" in rec.getMessage() for rec in caplog.records) == 1

    loaders = get_data_loaders(batch_size=8, num_workers=0, data=data)
    for split, loader in loaders.items():  # a full epoch of every split, no crash
        assert sum(len(labels) for _, labels in loader) == len(loader.dataset), split


def test_a_photo_broken_after_the_check_does_not_end_the_epoch(tiny_dataset, caplog):
    data = load_landmark_data(tiny_dataset)
    loaders = get_data_loaders(batch_size=4, num_workers=0, data=data)
    victim = data.valid[1][0]
    victim.write_bytes(b"overwritten by a sync tool")
    with caplog.at_level(logging.WARNING, logger="src.data"):
        seen = sum(len(labels) for _, labels in loaders["valid"])
    assert seen == len(data.valid)  # replaced by another photo, not dropped from the batch
    assert str(victim) in loaders["valid"].dataset.bad_files
    assert any(victim.name in rec.getMessage() for rec in caplog.records)


def test_odd_formats_and_lying_extensions_in_a_data_set(tiny_dataset):
    cls = tiny_dataset / "train" / "01.Landmark_B"
    rgb = np.asarray(Image.open(next(cls.glob("*.jpg"))).convert("RGB"))
    Image.fromarray(rgb).save(cls / "actually_png.jpg", "PNG")
    Image.fromarray(rgb).convert("P").save(cls / "palette.gif", "GIF")
    Image.fromarray(rgb).save(cls / "photo.bmp", "BMP")
    Image.fromarray(rgb).convert("L").save(cls / "gray.webp", "WEBP")
    Image.new("RGB", (2000, 3), (10, 200, 10)).save(cls / "strip.png")  # extreme aspect ratio
    data = load_landmark_data(tiny_dataset)
    assert data.bad_files == []
    names = {p.name for p, _ in data.train + data.valid}
    assert {"actually_png.jpg", "palette.gif", "photo.bmp", "gray.webp", "strip.png"} <= names
    loaders = get_data_loaders(batch_size=64, num_workers=0, data=data)
    for split in ("train", "valid"):
        images, _ = next(iter(loaders[split]))
        assert images.shape[1:] == (3, 224, 224) and torch.isfinite(images).all()


def test_missing_or_wrong_data_dir_is_one_clear_line(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_landmark_data(tmp_path / "nope")
    assert "nope" in str(info.value) and "\n" not in str(info.value) and "does not exist" in str(info.value)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataNotFoundError, match="train/ and test/"):
        load_landmark_data(tmp_path / "flat")


# ---------------------------------------------------------------------------------------------------------------
# Names, pictures, command line
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder,name", [
    ("00.Haleakala_National_Park", "Haleakala National Park"),
    ("49.Temple_of_Heaven", "Temple of Heaven"),
    ("7.Taj_Mahal", "Taj Mahal"),
    ("Golden_Gate_Bridge", "Golden Gate Bridge"),
    ("Mt.Rushmore", "Mt.Rushmore"),
    ("12.St._Peter's_Basilica", "St. Peter's Basilica"),
    ("123.Petra", "Petra"),
])
def test_class_display_name(folder, name):
    assert class_display_name(folder) == name


def test_visualize_one_batch_shows_unnormalised_images_with_names(tiny_dataset):
    loaders = get_data_loaders(batch_size=8, num_workers=0, data_dir=tiny_dataset)
    fig = visualize_one_batch(loaders, max_n=3, split="valid")
    try:
        assert isinstance(fig, matplotlib.figure.Figure)
        axes = [ax for ax in fig.axes if ax.images]
        assert len(axes) == 3
        ds = loaders["valid"].dataset
        images, labels = next(iter(loaders["valid"]))
        shown = denormalize(images[:3], ds.mean, ds.std)
        for ax, img, label in zip(axes, shown, labels):
            assert ax.get_title() == class_display_name(ds.class_names[int(label)])
            data = np.asarray(ax.images[0].get_array())
            assert data.shape == (224, 224, 3) and data.min() >= 0 and data.max() <= 1
            np.testing.assert_allclose(data, img.permute(1, 2, 0).numpy(), atol=1e-6)
    finally:
        plt.close(fig)
    fig = visualize_one_batch(loaders)  # defaults: train split, 5 images
    assert len([ax for ax in fig.axes if ax.images]) == 5
    assert {ax.get_title() for ax in fig.axes} <= {f"Landmark {c}" for c in "ABC"}
    plt.close(fig)


def test_plot_channel_histograms_before_and_after_normalisation(tiny_dataset):
    loaders = get_data_loaders(batch_size=8, num_workers=0, data_dir=tiny_dataset)
    fig = plot_channel_histograms(loaders)
    try:
        assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
        before, after = fig.axes
        assert "before" in before.get_title() and "after" in after.get_title()
        for ax in (before, after):
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["red", "green", "blue"]
        lo_before = min(p.get_x() for p in before.patches)
        hi_before = max(p.get_x() + p.get_width() for p in before.patches)
        assert 0 <= lo_before and hi_before <= 1.0001
        assert min(p.get_x() for p in after.patches) < 0 < max(p.get_x() for p in after.patches)
    finally:
        plt.close(fig)


def _cli_args(*argv):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(list(argv))


def test_data_command_prints_counts_and_mean_std(tiny_dataset, capsys):
    write_truncated_jpeg(tiny_dataset / "train" / "00.Landmark_A" / "broken.jpg")
    assert data_main(_cli_args("--data-dir", str(tiny_dataset))) == 0
    out = capsys.readouterr().out
    assert "3 classes" in out and "Landmark A" in out
    assert "train 24 / valid 6 / test 12 photos; 1 unreadable files left out" in out
    assert "broken.jpg" in out
    mean, std = compute_mean_and_std(tiny_dataset)
    assert "mean " + ", ".join(f"{m:.4f}" for m in mean) in out
    assert "std " + ", ".join(f"{s:.4f}" for s in std) in out


@pytest.mark.slow
def test_python_m_src_data(tiny_dataset):
    proc = subprocess.run([sys.executable, "-m", "src", "data", "--data-dir", str(tiny_dataset)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train 24 / valid 6 / test 12 photos" in proc.stdout and "mean " in proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# The shared landmark photos (skipped where absent)
# ---------------------------------------------------------------------------------------------------------------

def _files_by_format(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            try:
                fmt = Image.open(p).format
            except Exception:  # noqa: BLE001 - counted as undecodable
                fmt = "undecodable"
            found.setdefault(fmt, []).append(p)
    return found


@pytest.mark.slow
def test_shared_landmarks(shared_data):
    data = load_landmark_data(shared_data)
    assert len(data.class_names) == 13
    train_files = _files_by_format(shared_data / "train")
    test_files = _files_by_format(shared_data / "test")
    n_train_files = sum(map(len, train_files.values()))
    bad_train = [p for p, _ in data.bad_files if (shared_data / "train") in Path(p).parents]
    # Every photo is used, or reported with its reason (the message names which).
    assert len(data.train) + len(data.valid) + len(bad_train) == n_train_files, data.bad_files
    assert len(data.train) + len(data.valid) == 821, f"unreadable: {data.bad_files}"
    assert len(data.test) + len(data.bad_files) - len(bad_train) == sum(map(len, test_files.values()))
    used = {p for p, _ in data.train + data.valid + data.test}
    gifs = train_files.get("GIF", []) + test_files.get("GIF", [])
    assert gifs and all(g in used for g in gifs)  # GIFs are photos too

    loaders = get_data_loaders(batch_size=8, num_workers=0, data=data)
    assert set(loaders) == {"train", "valid", "test"}
    for loader in loaders.values():
        images, labels = next(iter(loader))
        assert images.shape == (8, 3, 224, 224) and images.dtype == torch.float32
        assert 0 <= labels.min() and labels.max() < 13
    fig = visualize_one_batch(loaders, max_n=5)
    assert len([ax for ax in fig.axes if ax.images]) == 5
    assert all(ax.get_title() in data.display_names for ax in fig.axes if ax.images)
    plt.close(fig)
    mean, std = compute_mean_and_std(shared_data)
    assert all(0.3 < m < 0.7 for m in mean) and all(0.15 < s < 0.4 for s in std)
    assert loaders["train"].dataset.mean == mean
