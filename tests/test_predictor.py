"""The exported predictor: preprocessing inside the module, TorchScript/ONNX export checked on reload, loading
exported files, the test-set evaluation and the app's functions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from src.__main__ import main as cli
from src.data import get_transforms
from src.helpers import quiet_torchscript
from src.evaluation import (confusion_matrix, per_class_accuracy, plot_confusion_matrix, plot_per_class_accuracy,
                            predictor_test)
from src.onnx_export import export_onnx
from src.predictor import (ExportedModelError, ExportError, Predictor, check_inputs, default_export_path,
                           export_torchscript, load_exported, load_image_tensor, predict_landmarks, suggest_locations,
                           suggestion_question)

MEAN, STD = [0.48, 0.45, 0.41], [0.23, 0.22, 0.24]
CLASSES = ["09.Golden_Gate_Bridge", "16.Eiffel_Tower", "07.My_Back_Garden"]


class TinyNet(nn.Module):
    """A real (small) CNN: conv-BN-ReLU, global pooling, linear."""

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():  # non-trivial running stats, so eval-mode batch norm matters
            self.features[1].running_mean.uniform_(-0.2, 0.2)
            self.features[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class NeedsHelpToScript(TinyNet):
    """Its forward uses Python TorchScript rejects (``**kwargs``); ``scriptable`` hands export a traced copy."""

    def forward(self, x, **kwargs):  # noqa: D401 - TorchScript cannot compile **kwargs
        return super().forward(x)

    def scriptable(self, example: torch.Tensor) -> nn.Module:
        return _Plain(self)


class _Plain(nn.Module):
    def __init__(self, net: TinyNet):
        super().__init__()
        self.features, self.fc = net.features, net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class DiffersWhenScripted(TinyNet):
    """An export bug on purpose: the scripted module computes something else than the eager one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.features(x))
        if torch.jit.is_scripting():
            out = out * 1.5
        return out


def make_predictor(net: nn.Module | None = None, img_size: int = 32) -> Predictor:
    return Predictor(net or TinyNet(len(CLASSES)), CLASSES, MEAN, STD, img_size=img_size, arch="scratch")


def photo_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth pattern plus noise (like a photo: structure at several scales)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# ---- the module itself -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 100, 64), (3, 3, 36, 36), (1, 3, 9, 300), (1, 3, 512, 20)])
def test_any_size_and_dtype_gives_probabilities(shape):
    p = make_predictor()
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = p(x)
        probs_float = p(x.float() / 255.0)
    assert probs.shape == (shape[0], len(CLASSES))
    assert torch.allclose(probs.sum(1), torch.ones(shape[0]), atol=1e-6) and (probs >= 0).all()
    assert torch.allclose(probs, probs_float, atol=1e-6)  # uint8 and float [0, 1] input are the same image


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError):
        make_predictor()(torch.zeros(1, 4, 40, 40, dtype=torch.uint8))


@pytest.mark.parametrize("w,h", [(333, 250), (250, 333), (97, 61), (481, 301)])
def test_preprocessing_matches_the_training_transforms(w, h):
    """Resize (antialiased) + center crop + normalise inside the module = get_transforms('test') on a PIL photo,
    up to the PIL path's rounding to 8 bits; a one-pixel crop offset would be ~20x larger."""
    arr = photo_array(h, w)
    ours = make_predictor(nn.Identity(), img_size=64).preprocess(torch.from_numpy(arr).permute(2, 0, 1)[None])[0]
    reference = get_transforms("test", 64, MEAN, STD)(Image.fromarray(arr))
    assert ours.shape == reference.shape == (3, 64, 64)
    one_level = 1 / 255 / min(STD)
    assert (ours - reference).abs().max() < 2 * one_level
    assert (ours - reference).abs().mean() < 0.5 * one_level


# ---- TorchScript export ------------------------------------------------------------------------------------------

def test_export_reload_agrees_and_keeps_class_names(tmp_path):
    p = make_predictor()
    out = tmp_path / "checkpoints" / "original_exported.pt"
    report = export_torchscript(p, out)
    assert out.is_file() and report["max_abs_diff"] <= 1e-5 and report["n_inputs"] >= 4
    assert not [f for f in out.parent.iterdir() if f.name != out.name]  # no temporary files left
    reloaded = load_exported(out)
    assert list(reloaded.class_names) == CLASSES
    assert (reloaded.img_size, reloaded.resize_size) == (32, 36)
    for x in check_inputs(32, seed=5) + [torch.randint(0, 256, (4, 3, 77, 41), dtype=torch.uint8)]:
        with torch.no_grad():
            assert (reloaded(x) - p(x)).abs().max() <= 1e-5


def test_export_uses_scriptable_when_the_model_needs_it(tmp_path):
    p = make_predictor(NeedsHelpToScript(len(CLASSES)))
    with quiet_torchscript(), pytest.raises(Exception):
        torch.jit.script(p.model)  # really not scriptable as is
    export_torchscript(p, tmp_path / "x.pt")
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(load_exported(tmp_path / "x.pt")(x), p(x), atol=1e-6)


def test_export_refuses_a_file_that_disagrees_and_leaves_nothing(tmp_path):
    out = tmp_path / "bad.pt"
    with pytest.raises(ExportError, match="disagrees with the eager model"):
        export_torchscript(make_predictor(DiffersWhenScripted(len(CLASSES))), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_keeps_the_old_file_when_the_new_export_fails(tmp_path):
    out = tmp_path / "model.pt"
    export_torchscript(make_predictor(), out)
    before = out.read_bytes()
    with pytest.raises(ExportError):
        export_torchscript(make_predictor(DiffersWhenScripted(len(CLASSES))), out)
    assert out.read_bytes() == before


# ---- ONNX export -------------------------------------------------------------------------------------------------

def test_onnx_export_agrees_at_any_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    p = make_predictor()
    out = tmp_path / "model.onnx"
    report = export_onnx(p, out)
    assert report["max_abs_diff"] <= 1e-5
    meta = {e.key: e.value for e in onnx.load(str(out)).metadata_props}
    assert meta["class_names"].split("\n") == CLASSES and meta["img_size"] == "32"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 123, 45), (3, 3, 36, 36), (2, 3, 20, 31)]:  # sizes it was not traced with
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - p(x).numpy()).max() <= 1e-5


# ---- loading exported files --------------------------------------------------------------------------------------

def test_load_exported_errors_are_one_clear_line(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope.pt"
    (tmp_path / "text.pt").write_text("hello, not a model\n")
    cases["not TorchScript"] = tmp_path / "text.pt"
    torch.save({"format": "landmark-tagger/1", "model": TinyNet().state_dict()}, tmp_path / "ckpt.pt")
    cases["training checkpoint"] = tmp_path / "ckpt.pt"
    with quiet_torchscript():
        torch.jit.save(torch.jit.script(TinyNet()), str(tmp_path / "foreign.pt"))
    cases["no class_names"] = tmp_path / "foreign.pt"
    expected = {"missing": "no such file", "not TorchScript": "not a TorchScript file",
                "training checkpoint": "training checkpoint", "no class_names": "not an exported landmark predictor"}
    for what, path in cases.items():
        with pytest.raises(ExportedModelError) as info:
            load_exported(path)
        message = str(info.value)
        assert message.startswith(str(path)) and "\n" not in message and expected[what] in message, (what, message)


def test_default_export_paths():
    assert default_export_path("scratch").name == "original_exported.pt"
    assert default_export_path("scratch").parent.name == "checkpoints"
    assert default_export_path("resnet18").name == "transfer_exported.pt"
    assert default_export_path("efficientnet_lite0").name == "transfer_exported.pt"


# ---- files -> model input, evaluation, the app's functions -------------------------------------------------------

def natural_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """1/f noise: the power spectrum of natural photos (edges and texture at every scale)."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fft2(rng.normal(size=(3, h, w)))
    radius = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    radius[0, 0] = 1.0
    img = np.real(np.fft.ifft2(spectrum / radius, axes=(1, 2)))
    img = (img - img.mean()) / img.std() * 50 + 128
    return np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)


@pytest.mark.parametrize("size,fmt", [((1400, 1100), "PNG"), ((333, 250), "JPEG"), ((250, 333), "WEBP"),
                                      ((97, 61), "PNG")])
def test_a_file_reaches_the_network_exactly_as_the_test_transforms_give_it(tmp_path, size, fmt):
    """File -> load_image_tensor -> module preprocessing equals open_image -> get_transforms("test") (Pillow
    resize, center crop, normalise), to float rounding: the module does not resample an image at its size."""
    from src.images import open_image

    Image.fromarray(natural_image(size[1], size[0])).save(tmp_path / "photo", format=fmt)
    p = make_predictor(nn.Identity(), img_size=64)  # resize to 73, crop 64: an odd margin, the harder case
    tensor = load_image_tensor(tmp_path / "photo", p.resize_size)
    assert min(tensor.shape[1:]) == p.resize_size and tensor.dtype == torch.uint8
    ours = p.preprocess(tensor[None])[0]
    reference = get_transforms("test", 64, MEAN, STD)(open_image(tmp_path / "photo", draft_size=p.resize_size))
    assert (ours - reference).abs().max() < 1e-5


@pytest.mark.parametrize("img_size", [32, 64, 224])
def test_batch_squares_keep_the_single_photo_crop(img_size):
    """prepare_for_batch cuts a square such that the module's crop inside it equals its crop of the whole photo,
    for every width parity (round-half-to-even offsets do not add up naively), uint8 and float paths alike."""
    from src.predictor import prepare_for_batch, resize_and_center_crop, resize_size_for

    r = resize_size_for(img_size)
    g = torch.Generator().manual_seed(img_size)
    for extra in range(0, 12):
        for shape in ((r, r + extra), (r + extra, r)):
            image = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=g)
            square = prepare_for_batch(image, r, img_size)
            assert square.shape == (3, r, r) and square.dtype == torch.uint8
            whole = resize_and_center_crop(image[None].float(), r, img_size)
            assert torch.equal(resize_and_center_crop(square[None].float(), r, img_size), whole), (shape, img_size)
    odd = torch.randint(0, 256, (3, r + 30, r * 2 + 7), dtype=torch.uint8, generator=g)  # not at the resize size
    square = prepare_for_batch(odd, r, img_size)
    assert square.shape == (3, r, r) and square.dtype == torch.float32
    assert torch.allclose(resize_and_center_crop(square[None], r, img_size),
                          resize_and_center_crop(odd[None].float() / 255, r, img_size), atol=1e-6)


def test_suggestion_question_wording():
    assert suggestion_question(["A", "B", "C"]) == "Is this picture of the A, B, or C?"
    assert suggestion_question(["A", "B"]) == "Is this picture of the A or B?"
    assert suggestion_question(["A"]) == "Is this picture of the A?"


def test_confusion_matrix_and_per_class_accuracy():
    truth, preds = np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(truth, preds, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    acc = per_class_accuracy(truth, preds, ["a", "b", "c", "d"])
    assert acc == {"a": 0.5, "b": pytest.approx(2 / 3), "c": 1.0, "d": None}


def _checkpoint(tmp_path, dataset_root, img_size=32, name="run", seed=0):
    """A hand-made checkpoint in the training contract's format around a small MyModel."""
    from src.model import create_model

    classes = sorted(p.name for p in (dataset_root / "train").iterdir())
    kwargs = {"dropout": 0.0, "widths": [8, 8, 16, 16], "depths": [1, 1, 1, 1]}
    torch.manual_seed(seed)
    model = create_model("scratch", len(classes), **kwargs)
    ckpt = {"format": "landmark-tagger/1", "arch": "scratch", "model_kwargs": kwargs, "model": model.state_dict(),
            "class_names": classes, "mean": MEAN, "std": STD, "img_size": img_size, "epoch": 1,
            "history": [], "args": {}, "best_valid_loss": 1.0}
    path = tmp_path / name / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path, model.eval(), classes


def test_export_command_from_a_checkpoint(tmp_path, tiny_dataset, capsys):
    pytest.importorskip("onnxruntime")
    ckpt, model, classes = _checkpoint(tmp_path, tiny_dataset)
    out = tmp_path / "exported" / "original_exported.pt"
    assert cli(["export", "--checkpoint", str(ckpt), "--out", str(out), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert f"Exported {out}" in printed and "onnxruntime" in printed
    reloaded = load_exported(out)
    assert list(reloaded.class_names) == classes and reloaded.arch == "scratch"
    eager = Predictor(model, classes, MEAN, STD, 32)
    x = load_image_tensor(next((tiny_dataset / "test").rglob("*.jpg")), reloaded.resize_size)[None]
    with torch.no_grad():
        assert (reloaded(x) - eager(x)).abs().max() <= 1e-5
    assert out.with_suffix(".onnx").is_file()


def test_export_command_with_several_checkpoints_exports_their_ensemble(tmp_path, tiny_dataset, capsys):
    pytest.importorskip("onnxruntime")
    a, model_a, classes = _checkpoint(tmp_path, tiny_dataset, name="a", seed=0)
    b, model_b, _ = _checkpoint(tmp_path, tiny_dataset, name="b", seed=1)
    out = tmp_path / "ensemble.pt"
    assert cli(["export", "--checkpoint", str(a), str(b), "--out", str(out), "--onnx"]) == 0
    assert "ensemble:scratch+scratch" in capsys.readouterr().out
    reloaded = load_exported(out)
    assert reloaded.arch == "ensemble:scratch+scratch" and list(reloaded.class_names) == classes
    x = load_image_tensor(next((tiny_dataset / "test").rglob("*.jpg")), reloaded.resize_size)[None]
    with torch.no_grad():
        p_a, p_b = (Predictor(m, classes, MEAN, STD, 32)(x) for m in (model_a, model_b))
        got = reloaded(x)
    assert (p_a - p_b).abs().max() > 1e-3  # two different members: the average is not either of them
    assert (got - (p_a + p_b) / 2).abs().max() <= 1e-5
    assert got.sum().item() == pytest.approx(1.0, abs=1e-5)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(onnx_probs - got.numpy()).max() <= 1e-4


def test_ensemble_members_that_need_help_to_script_export(tmp_path):
    from src.predictor import Ensemble

    ensemble = Ensemble([NeedsHelpToScript(len(CLASSES), seed=0), NeedsHelpToScript(len(CLASSES), seed=1)])
    report = export_torchscript(make_predictor(ensemble), tmp_path / "e.pt")
    assert report["max_abs_diff"] <= 1e-5
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble([TinyNet(len(CLASSES))])


def test_ensemble_of_mismatched_checkpoints_is_refused_in_one_line(tmp_path, tiny_dataset, capsys):
    a, _, _ = _checkpoint(tmp_path, tiny_dataset, name="a")
    b, _, _ = _checkpoint(tmp_path, tiny_dataset, name="b", img_size=48)
    out = tmp_path / "ensemble.pt"
    assert cli(["export", "--checkpoint", str(a), str(b), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(b) in err and "img_size" in err and "\n" not in err
    assert not out.exists()


def test_export_command_bad_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    assert cli(["export", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "junk.pt" in err and "\n" not in err
    assert not (tmp_path / "x.pt").exists()


def test_predictor_test_and_app_functions(tmp_path, tiny_dataset, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from src.data import get_data_loaders

    ckpt, model, classes = _checkpoint(tmp_path, tiny_dataset)
    out = tmp_path / "m.pt"
    export_torchscript(Predictor(model, classes, MEAN, STD, 32), out)
    reloaded = load_exported(out)
    loaders = get_data_loaders(batch_size=4, num_workers=0, data_dir=tiny_dataset, img_size=32, mean=MEAN, std=STD)
    truth, preds = predictor_test(loaders["test"], reloaded)
    n_test = len(loaders["test"].dataset)
    assert truth.shape == preds.shape == (n_test,) and set(truth.tolist()) == set(range(len(classes)))
    assert plot_confusion_matrix(truth, preds, classes) is not None
    assert plot_per_class_accuracy(truth, preds, classes) is not None
    # the same predictions as the module on each file
    paths = [p for p, _ in loaders["test"].dataset.samples]
    with torch.no_grad():
        direct = [int(reloaded(load_image_tensor(p, reloaded.resize_size)[None]).argmax()) for p in paths]
    assert preds.tolist() == direct

    photo = paths[0]
    names, probs = predict_landmarks(photo, k=2, model=str(out))
    assert len(names) == 2 and probs[0] >= probs[1] and names[0] in [c.split(".", 1)[1].replace("_", " ")
                                                                      for c in classes]
    question = suggest_locations(photo, k=3, model=reloaded, show=True)
    assert question.startswith("Is this picture of the ") and question in capsys.readouterr().out


def test_end_to_end_train_export_predict(tmp_path, tiny_dataset, capsys):
    """The real pipeline: train a tiny scratch model, export its checkpoint, predict a photo with the file."""
    run = tmp_path / "run"
    assert cli(["train", "--arch", "scratch", "--data-dir", str(tiny_dataset), "--out", str(run), "--epochs", "1",
                "--img-size", "32", "--widths", "8,8,16,16", "--depths", "1,1,1,1", "--batch-size", "8",
                "--workers", "0", "--no-cache-images"]) == 0
    out = tmp_path / "original_exported.pt"
    assert cli(["export", "--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    capsys.readouterr()
    photo = next((tiny_dataset / "test").rglob("*.png"))
    assert cli(["predict", "--model", str(out), "--json", "-k", "2", str(photo)]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["path"] == str(photo) and record["status"] == "ok" and len(record["top_k"]) == 2
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert record["top_k"][0]["class"] in ckpt["class_names"]
