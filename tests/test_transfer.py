"""Transfer learning: model construction, freezing, TorchScript, offline weights, the feature cache."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from src import efficientnet_lite, feature_cache, transfer
from src.data import load_landmark_data, scan_split
from src.feature_cache import get_feature_loaders
from src.optimization import get_optimizer
from src.helpers import quiet_torchscript
from src.images import open_image
from src.efficientnet_lite import LITE_MEAN
from src.transfer import (
    OFFLINE_ARCH,
    TransferModel,
    WeightsUnavailableError,
    backbone_stages,
    get_model_transfer_learning,
)
from tests.conftest import make_photo


def _grads(model: TransferModel) -> tuple[set[str], set[str]]:
    """(names of parameters that received a gradient, names that did not) after one backward pass."""
    model.train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return got, {n for n, _ in model.named_parameters()} - got


@pytest.mark.parametrize("arch, n_classes", [
    ("resnet18", 3), ("mobilenet_v3_small", 50), ("efficientnet_b0", 7), ("squeezenet1_1", 13),
    ("shufflenet_v2_x0_5", 2), ("googlenet", 5), (OFFLINE_ARCH, 13), ("efficientnet_lite1", 4),
    ("efficientnet_lite2", 50),
])
def test_weights_none_builds_any_architecture(arch, n_classes):
    model = get_model_transfer_learning(arch, n_classes=n_classes, weights=None).eval()
    assert isinstance(model, TransferModel)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.backbone(x)
        logits = model(x)
    assert features.shape == (2, model.num_features)
    assert logits.shape == (2, n_classes)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == n_classes
    assert len(model.mean) == 3 and len(model.std) == 3
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert model.model_kwargs == {"dropout": 0.0, "unfreeze": 0}


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError) as info:
        get_model_transfer_learning("resnet_9000", n_classes=3, weights=None)
    message = str(info.value)
    assert "resnet_9000" in message and "resnet18" in message and OFFLINE_ARCH in message and "\n" not in message


def test_frozen_backbone_only_head_gets_gradients():
    model = get_model_transfer_learning("resnet18", n_classes=4, weights=None)
    bn = model.backbone.layer1[0].bn1
    before = bn.running_mean.clone()
    got, missed = _grads(model)
    assert got == {"head.weight", "head.bias"}
    assert all(n.startswith("backbone.") for n in missed)
    # The frozen backbone stays in eval mode during training: its batch-norm statistics do not drift.
    assert not model.backbone.training and model.head.training
    assert torch.equal(bn.running_mean, before)
    assert [g["name"] for g in model.param_groups(0.01)] == ["head"]


def test_unfreeze_last_stage_trains_it_at_a_smaller_rate():
    model = get_model_transfer_learning("resnet18", n_classes=4, weights=None, unfreeze=1)
    got, _ = _grads(model)
    assert {n for n in got if n.startswith("backbone.")} == {
        n for n, _ in model.named_parameters() if n.startswith("backbone.layer4.")}
    assert "head.weight" in got
    assert model.backbone.layer4.training and not model.backbone.layer3.training
    groups = {g["name"]: g for g in model.param_groups(0.01)}
    assert groups["head"]["lr"] == pytest.approx(0.01) and groups["backbone"]["lr"] == pytest.approx(0.001)
    assert sum(p.numel() for p in groups["backbone"]["params"]) == sum(
        p.numel() for p in model.backbone.layer4.parameters())


def test_unfreeze_efficientnet_lite0_stages_and_dropout_head():
    model = get_model_transfer_learning(OFFLINE_ARCH, n_classes=3, weights=None, unfreeze=2, dropout=0.3)
    stages = backbone_stages(model.backbone)
    assert len(stages) == 9  # stem, 7 block stages, head conv
    got, _ = _grads(model)
    last_two = {id(p) for stage in stages[-2:] for m in stage for p in m.parameters()}
    trained = {id(p) for n, p in model.named_parameters() if n in got and n.startswith("backbone.")}
    assert trained == last_two
    assert isinstance(model.head, nn.Sequential) and isinstance(model.head[0], nn.Dropout)
    model.set_unfrozen(0)
    assert model.is_frozen()


@pytest.mark.parametrize("arch", transfer.OFFLINE_ARCHS)
def test_offline_backbone_loads_the_packaged_weights_and_matches_the_reference_code(arch):
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite.efficientnet_lite_weights_file(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = get_model_transfer_learning(arch, n_classes=5).eval()
    assert torch.equal(model.backbone._conv_stem.weight, state["_conv_stem.weight"])
    assert model.mean == LITE_MEAN
    reference = EfficientNet.from_name(arch.replace("_", "-"))  # ReLU6 everywhere: set_swish() is never called
    reference.load_state_dict(state)
    reference.eval()
    size = efficientnet_lite.LITE_VARIANTS[arch][1]  # the reference pads for this size only
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = reference._avg_pooling(reference.extract_features(x)).flatten(1)
        assert torch.allclose(model.backbone(x), expected, atol=1e-5)
        # Folding batch norms for fast extraction keeps the features.
        assert torch.allclose(feature_cache.inference_backbone(model.backbone)(x), expected, atol=1e-4)


@pytest.mark.parametrize("arch, size", [(OFFLINE_ARCH, 97), ("resnet18", 64)])
def test_scripted_model_matches_eager(arch, size):
    model = get_model_transfer_learning(arch, n_classes=6, weights="DEFAULT" if arch == OFFLINE_ARCH else None)
    model.eval()
    x = torch.randn(2, 3, size, size)
    with quiet_torchscript():
        scripted = torch.jit.script(model.scriptable(x))
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_traced_fallback_for_a_backbone_that_does_not_script():
    class Unscriptable(nn.Module):
        def forward(self, *inputs):  # TorchScript has no *args
            return inputs[0].mean(dim=(2, 3))

    model = TransferModel(Unscriptable(), 3, 2, [0.5] * 3, [0.5] * 3, "custom").eval()
    x = torch.randn(2, 3, 8, 8)
    with quiet_torchscript():
        with pytest.raises(Exception):
            torch.jit.script(model)
        scripted = torch.jit.script(model.scriptable(x))
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_download_failure_says_where_the_file_goes(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError) as info:
        get_model_transfer_learning("resnet18", n_classes=3)
    message = str(info.value)
    assert isinstance(info.value, WeightsUnavailableError)
    assert "\n" not in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "--weights-path" in message and f"--arch {OFFLINE_ARCH}" in message
    assert "name resolution" in message


def test_local_weights_file(tmp_path):
    source = get_model_transfer_learning("resnet18", n_classes=3, weights=None)
    import torchvision

    full = torchvision.models.resnet18()
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    model = get_model_transfer_learning("resnet18", n_classes=3, weights_path=tmp_path / "r18.pth")
    assert torch.equal(model.backbone.conv1.weight, full.conv1.weight)
    assert not torch.equal(model.backbone.conv1.weight, source.backbone.conv1.weight)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="junk.pth: not a readable"):
        get_model_transfer_learning("resnet18", n_classes=3, weights_path=tmp_path / "junk.pth")


def test_real_resnet18_weights_when_cached():
    hub = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    if not hub.exists():
        pytest.skip(f"resnet18 ImageNet weights not in the torch hub cache ({hub})")
    model = get_model_transfer_learning("resnet18", n_classes=3)
    state = torch.load(hub, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])


# --------------------------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------------------------

_ARGS = {"img_size": 32, "n_views": 2, "batch_size": 8, "workers": 0, "seed": 0}


@pytest.fixture
def count_extractions(monkeypatch):
    """Counts backbone preparations for extraction (one per split extracted): 0 means served from the cache."""
    calls = []
    real = feature_cache.inference_backbone

    def counting(backbone):
        calls.append(1)
        return real(backbone)

    monkeypatch.setattr(feature_cache, "inference_backbone", counting)
    return calls


def test_feature_cache_is_reused_and_rebuilt_when_data_changes(tiny_dataset, count_extractions):
    torch.manual_seed(0)
    model = get_model_transfer_learning(OFFLINE_ARCH, n_classes=3, weights=None)
    data = load_landmark_data(tiny_dataset, valid_size=0.2, seed=0)
    loaders = get_feature_loaders(model, data, **_ARGS)
    assert len(count_extractions) == 3
    train = loaders["train"].dataset
    assert train.features.shape == (len(data.train), 2, model.num_features)
    assert not train.from_cache and train.cache_path.parent == data.cache_dir / "features"
    x, y = next(iter(loaders["train"]))
    assert x.dtype == torch.float32 and x.shape[1] == model.num_features and y.dtype == torch.long
    # Augmented views differ from the plain one.
    assert not torch.allclose(train.features[:, 0], train.features[:, 1])

    # Second run: nothing recomputed, identical features.
    count_extractions.clear()
    again = get_feature_loaders(model, load_landmark_data(tiny_dataset, valid_size=0.2, seed=0), **_ARGS)
    assert count_extractions == [] and again["train"].dataset.from_cache
    for split in ("train", "valid", "test"):
        assert torch.equal(again[split].dataset.features, loaders[split].dataset.features)

    # A new training photo: the cache no longer fits, features are rebuilt.
    make_photo(tiny_dataset / "train" / "00.Landmark_A" / "new.jpg", 0, 77)
    changed = load_landmark_data(tiny_dataset, valid_size=0.2, seed=0)
    rebuilt = get_feature_loaders(model, changed, **_ARGS)
    assert len(count_extractions) == 3 and not rebuilt["train"].dataset.from_cache
    assert len(rebuilt["train"].dataset) + len(rebuilt["valid"].dataset) == len(data.train) + len(data.valid) + 1

    # Different backbone weights: a different cache, never stale features.
    count_extractions.clear()
    with torch.no_grad():
        model.backbone._conv_head.weight.mul_(2)
    get_feature_loaders(model, changed, **_ARGS)
    assert len(count_extractions) == 3


def test_cached_features_are_what_the_model_computes_on_a_photo(tiny_dataset):
    """The fast path trains the head on exactly the features the exported model (backbone + head) sees."""
    model = get_model_transfer_learning(OFFLINE_ARCH, n_classes=3, weights=None).eval()
    data = load_landmark_data(tiny_dataset, valid_size=0.2, seed=0)
    loaders = get_feature_loaders(model, data, **_ARGS)
    plain, _ = feature_cache.feature_transforms(_ARGS["img_size"], model.mean, model.std)
    path, label = data.test[1]
    with torch.no_grad():
        direct = model.backbone(plain(open_image(path)).unsqueeze(0))[0]
    cached = loaders["test"].dataset.features[1, 0]
    assert loaders["test"].dataset.labels[1] == label
    assert torch.allclose(cached, direct, atol=1e-2, rtol=1e-2)


def test_unreadable_photo_is_skipped_not_fatal(tiny_dataset):
    model = get_model_transfer_learning(OFFLINE_ARCH, n_classes=3, weights=None)
    data = load_landmark_data(tiny_dataset, valid_size=0.2, seed=0)
    broken = data.test[0][0]
    broken.write_bytes(b"now corrupt")  # broken after the data set was checked
    loaders = get_feature_loaders(model, data, **_ARGS)
    assert len(loaders["test"].dataset) == len(data.test) - 1


@pytest.mark.slow
def test_offline_backbone_features_separate_two_real_landmarks(shared_data):
    """Real weights on real photos: a linear head on a few training photos tells two landmarks apart on
    held-out photos. (Random weights or the wrong normalisation fail this.)"""
    classes = sorted(p.name for p in (shared_data / "train").iterdir() if p.is_dir())
    model = get_model_transfer_learning(OFFLINE_ARCH, n_classes=2).eval()
    plain, _ = feature_cache.feature_transforms(224, model.mean, model.std)

    def features(split: str, n: int):
        samples = scan_split(shared_data / split, classes)  # the first two landmarks are labels 0 and 1
        picked = [s for c in range(2) for s in [t for t in samples if t[1] == c][:n]]
        x = torch.stack([plain(open_image(p)) for p, _ in picked])
        with torch.no_grad():
            return model.backbone(x), torch.tensor([c for _, c in picked])

    x_train, y_train = features("train", 8)
    x_test, y_test = features("test", 6)
    torch.manual_seed(0)
    head = nn.Linear(model.num_features, 2)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(head(x_train), y_train).backward()
        opt.step()
    accuracy = (head(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.9, accuracy


def test_course_model_keeps_the_course_behaviour():
    """The benchmark's baseline: frozen weights, but batch norms follow model.train() as in the course."""
    model = transfer.CourseTransferModel(OFFLINE_ARCH, n_classes=3, weights=None)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    bn = model.backbone._bn0
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert bn.training and not torch.equal(bn.running_mean, before)


@pytest.mark.slow
@pytest.mark.parametrize("unfreeze", [0, None])
def test_cli_trains_on_cached_features_and_exports(tiny_dataset, tmp_path, unfreeze):
    """`python -m src train --arch efficientnet_lite0`: the head (--unfreeze 0) or, by default, the last 2 stages
    and the head train on cached activations, and the saved network (backbone + head, rebuilt offline) scores the
    same on the test photos and exports to TorchScript."""
    from src.__main__ import main
    from src.data import get_data_loaders
    from src.optimization import get_loss
    from src.predictor import Predictor, export_torchscript
    from src.checkpoint import build_model_from_checkpoint, load_checkpoint
    from src.train import one_epoch_test

    out = tmp_path / "run"
    argv = ["train", "--arch", OFFLINE_ARCH, "--data-dir", str(tiny_dataset), "--epochs", "4", "--img-size", "64",
            "--n-views", "2", "--workers", "0", "--batch-size", "8", "--lr", "3e-3", "--out", str(out)]
    if unfreeze is not None:
        argv += ["--unfreeze", str(unfreeze)]
    assert main(argv) == 0
    cut = "" if unfreeze == 0 else "u2-"
    [cache] = (load_landmark_data(tiny_dataset).cache_dir / "features").glob(f"{OFFLINE_ARCH}-64px-2v-{cut}*.pt")
    cached = torch.load(cache, weights_only=True)["train"]["features"]
    # head only: pooled features; default: the 192-channel maps entering the last block (64 px -> 2x2)
    assert cached.shape[1:] == ((2, 1280) if unfreeze == 0 else (2, 192, 2, 2))
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["mean"] == pytest.approx(LITE_MEAN) and ckpt["model_kwargs"]["weights"] is None
    assert ckpt["model_kwargs"]["unfreeze"] == (0 if unfreeze == 0 else 2)
    model = build_model_from_checkpoint(ckpt)
    pretrained = get_model_transfer_learning(OFFLINE_ARCH, n_classes=3).backbone.state_dict()
    trained = model.backbone.state_dict()
    changed = {k for k in pretrained if not torch.equal(pretrained[k], trained[k])}
    if unfreeze == 0:
        assert not changed
    else:  # only the last block stage and the head convolution trained; batch-norm statistics kept
        assert changed and all(k.startswith(("_blocks.15.", "_conv_head", "_bn1.")) for k in changed), changed
        assert not any("running" in k for k in changed)
    loaders = get_data_loaders(batch_size=8, num_workers=0, img_size=64, mean=ckpt["mean"], std=ckpt["std"],
                               data=load_landmark_data(tiny_dataset))
    on_photos = one_epoch_test(loaders["test"], model, get_loss(), verbose=False)["accuracy"]
    import json

    reported = json.loads((out / "test_metrics.json").read_text())["test_acc"]
    assert on_photos == pytest.approx(reported, abs=1.5 / len(loaders["test"].dataset))
    assert on_photos >= 0.75
    predictor = Predictor(model, ckpt["class_names"], ckpt["mean"], ckpt["std"], img_size=64, arch=OFFLINE_ARCH)
    export_torchscript(predictor, tmp_path / "transfer_exported.pt")
    assert (tmp_path / "transfer_exported.pt").stat().st_size > 1_000_000


@pytest.mark.parametrize("unfreeze", [0, 1, 2, 3, 8, 9])
def test_efficientnet_lite0_cut_before_its_trainable_stages(unfreeze):
    """cache_split(): end(start(x)) is the backbone's output, start is frozen, every trainable backbone parameter
    is in end (and end shares the model's modules), a batch-norm-folded start gives the same activations."""
    model = get_model_transfer_learning(OFFLINE_ARCH, n_classes=3, weights=None, unfreeze=unfreeze).eval()
    split = model.cache_split()
    if unfreeze == 9:  # every stage trains: nothing to cache
        assert split is None
        return
    start, end = split
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = model.backbone(x)
        assert torch.allclose(end(start(x)), whole, atol=1e-5)
        assert torch.allclose(end(feature_cache.inference_backbone(start)(x)), whole, atol=1e-3, rtol=1e-3)
    assert not any(p.requires_grad for p in start.parameters())
    trainable = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in end.parameters() if p.requires_grad}
    assert (unfreeze == 0) == (not trainable)


def test_cached_activation_model_trains_the_end_slower_and_keeps_batch_norm_statistics():
    model = get_model_transfer_learning(OFFLINE_ARCH, n_classes=3, weights=None, unfreeze=2)
    start, end = model.cache_split()
    top = transfer.CachedActivationModel(end, model.head, backbone_lr_scale=0.25)
    optimizer = get_optimizer(top, "adamw", learning_rate=0.02)
    assert sorted(g["lr"] for g in optimizer.param_groups if g["params"]) == [0.005, 0.005, 0.02, 0.02]
    top.train()
    bns = [m for m in end.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns) and end.blocks[0].training  # stochastic depth still on
    before = bns[0].running_mean.clone()
    with torch.no_grad():
        acts = start(torch.randn(4, 3, 64, 64))
    loss = nn.functional.cross_entropy(top(acts), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert torch.equal(bns[0].running_mean, before)
    assert model.backbone._blocks[15]._project_conv.weight.grad is not None  # the model's own module trained
    assert model.backbone._blocks[14]._project_conv.weight.grad is None


def test_unfreeze_everything():
    model = get_model_transfer_learning("mobilenet_v3_small", n_classes=3, weights=None, unfreeze=99)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in model.modules())
