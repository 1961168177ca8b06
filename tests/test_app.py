"""The app's logic and widgets, without a browser: real generated photos, a tiny real exported model."""
from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import make_dataset, make_photo
from src import app as app_module
from src.app import (NO_LANDMARK_VERDICT, build_app, classify_image_bytes, find_exported_model, load_model,
                     uploaded_files)
from src.landmarks import landmark_info
from src.helpers import quiet_torchscript
from src.predictor import Predictor, export_torchscript, resized_shape

CLASS_NAMES = ["00.Landmark_A", "01.Landmark_B", "02.Landmark_C"]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
REPO_ROOT = Path(__file__).resolve().parent.parent


class TinyNet(nn.Module):
    """Colour-pooling classifier: enough to learn the generated photos' class colours in a second."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _train_tiny(n_classes: int, img_size: int = 64, steps: int = 60) -> nn.Module:
    """Fit TinyNet on generated photos of each class (normalised as the exported model will feed it)."""
    torch.manual_seed(0)
    net = TinyNet(n_classes)
    xs, ys = [], []
    for label in range(n_classes):
        for i in range(6):
            buf = io.BytesIO()
            make_photo(buf, label, i, size=(img_size, img_size), fmt="PNG")
            arr = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
            xs.append(torch.from_numpy(arr).permute(2, 0, 1))
            ys.append(label)
    x = (torch.stack(xs) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.tensor(ys)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        # label smoothing keeps it from being 100% sure, so bars and the threshold have something to show
        nn.functional.cross_entropy(net(x), y, label_smoothing=0.45).backward()
        opt.step()
    return net.eval()


def export_tiny_model(path: Path, class_names=CLASS_NAMES, img_size: int = 64) -> Path:
    """A small trained model exported through the project's real export path (src.predictor)."""
    net = _train_tiny(len(class_names), img_size)
    predictor = Predictor(net, list(class_names), MEAN, STD, img_size=img_size)
    with quiet_torchscript():
        export_torchscript(predictor, path)
    return path


def model_input_size(model, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a photo of ``size`` once resized as the exported model takes it (shorter side to
    the model's ``resize_size``)."""
    height, width = resized_shape(size[1], size[0], int(model.resize_size))
    return width, height


def jpeg_bytes(label: int, index: int = 0, size=(96, 72), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    make_photo(buf, label, index, size=size, fmt=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model") / "tiny_exported.pt")


@pytest.fixture(scope="module")
def model(exported_model):
    return load_model(exported_model)


# -- finding the model -----------------------------------------------------------------------------------------

def test_find_exported_model_prefers_transfer_then_scratch(tmp_path, monkeypatch):
    monkeypatch.delenv("LANDMARK_MODEL", raising=False)
    assert find_exported_model(tmp_path) is None
    (tmp_path / "original_exported.pt").write_bytes(b"x")
    assert find_exported_model(tmp_path) == tmp_path / "original_exported.pt"
    (tmp_path / "transfer_exported.pt").write_bytes(b"x")
    assert find_exported_model(tmp_path) == tmp_path / "transfer_exported.pt"
    monkeypatch.setenv("LANDMARK_MODEL", str(tmp_path / "mine.pt"))
    assert find_exported_model(tmp_path) == tmp_path / "mine.pt"


# -- classifying one file --------------------------------------------------------------------------------------

def test_classify_real_jpeg_gives_right_landmark_and_sorted_top_k(model):
    for label in range(3):
        r = classify_image_bytes(model, f"photo_{label}.jpg", jpeg_bytes(label, index=900), k=3, threshold=0.0)
        assert r["error"] is None
        assert [e["class_name"] for e in r["top"]][0] == CLASS_NAMES[label]
        assert r["top"][0]["name"] == f"Landmark {'ABC'[label]}"
        probs = [e["prob"] for e in r["top"]]
        assert probs == sorted(probs, reverse=True)
        assert 0.99 < sum(probs) <= 1.0001  # k = all classes: the whole distribution
        assert r["known"] and r["verdict"] == r["top"][0]["name"]
        assert r["image"].size == model_input_size(model, (96, 72))  # the photo as the model gets it


def test_classify_k_is_respected(model):
    data = jpeg_bytes(1)
    for k in (1, 2, 3):
        assert len(classify_image_bytes(model, "a.jpg", data, k=k)["top"]) == k
    assert len(classify_image_bytes(model, "a.jpg", data, k=10)["top"]) == 3  # no more than the classes


def test_classify_threshold_gives_no_landmark_verdict(model):
    data = jpeg_bytes(2)
    sure = classify_image_bytes(model, "a.jpg", data, k=2, threshold=0.0)
    top = sure["top"][0]["prob"]
    unsure = classify_image_bytes(model, "a.jpg", data, k=2, threshold=min(1.0, top + 0.01))
    assert unsure["known"] is False and unsure["verdict"] == NO_LANDMARK_VERDICT
    assert unsure["top"] == sure["top"]  # the best guesses are still reported


def test_classify_webp_named_jpg(model):
    r = classify_image_bytes(model, "holiday.jpg", jpeg_bytes(0, fmt="WEBP"), k=1, threshold=0.0)
    assert r["error"] is None and r["top"][0]["class_name"] == CLASS_NAMES[0]


@pytest.mark.parametrize("data", [b"this is not a photo\n", b"", b"\xff\xd8\xff\xe0" + b"\0" * 40])
def test_classify_non_image_gives_one_line_message_naming_file(model, data):
    r = classify_image_bytes(model, "broken.jpg", data)
    assert r["error"].startswith("broken.jpg: ")
    assert "\n" not in r["error"] and len(r["error"]) < 300
    assert "top" not in r


def test_uploaded_files_reads_ipywidgets_8_and_7_values():
    v8 = ({"name": "a.jpg", "type": "image/jpeg", "size": 3, "content": memoryview(b"abc"), "last_modified": 0},)
    assert uploaded_files(v8) == [("a.jpg", b"abc")]
    assert uploaded_files({"b.png": {"content": b"xy"}}) == [("b.png", b"xy")]
    assert uploaded_files(()) == []


# -- the widgets -----------------------------------------------------------------------------------------------

def _html_text(widget) -> str:
    """All text of a widget tree (HTML values, descriptions), for assertions."""
    parts = []
    for attr in ("value", "description"):
        v = getattr(widget, attr, None)
        if isinstance(v, str):
            parts.append(v)
    for child in getattr(widget, "children", ()):
        parts.append(_html_text(child))
    return "\n".join(parts)


def _upload(app, files):
    """What ipywidgets 8 deserialises a browser upload into: name, type, size, content (memoryview), date."""
    when = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
    app.upload.value = tuple({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
                              "last_modified": when} for name, data in files)


def test_app_classifies_uploaded_photos_and_reports_broken_file(exported_model):
    import ipywidgets as widgets

    app = build_app(exported_model, display=False)
    assert not app.classify_button.disabled and app.upload.multiple
    _upload(app, [("red.jpg", jpeg_bytes(0, 7)), ("broken.jpg", b"not a photo at all"),
                  ("blue.png", jpeg_bytes(2, 8, fmt="PNG"))])
    app.threshold.value = 0.0
    app.classify_button.click()

    assert len(app.cards.children) == 3
    red, broken, blue = app.cards.children
    red_text, blue_text = _html_text(red), _html_text(blue)
    assert "red.jpg" in red_text and "Landmark A" in red_text and "%" in red_text
    assert "blue.png" in blue_text and "Landmark C" in blue_text
    bars = [w for w in _walk(red) if isinstance(w, widgets.FloatProgress)]
    assert len(bars) == app.k.value == 3
    assert [b.value for b in bars] == sorted((b.value for b in bars), reverse=True)
    thumbs = [w for w in _walk(red) if isinstance(w, widgets.Image)]
    assert len(thumbs) == 1 and Image.open(io.BytesIO(thumbs[0].value)).size == model_input_size(app.model, (96, 72))
    assert "broken.jpg: not an image" in _html_text(broken)
    assert not [w for w in _walk(broken) if isinstance(w, (widgets.Image, widgets.FloatProgress))]
    assert "Classified 2 of 3 files. 1 could not be used" in app.status.value

    # Controls re-render the cards without another click: fewer bars, then the "no landmark" verdict.
    app.k.value = 1
    assert len([w for w in _walk(app.cards.children[0]) if isinstance(w, widgets.FloatProgress)]) == 1
    app.threshold.value = 1.0
    assert NO_LANDMARK_VERDICT in _html_text(app.cards.children[0])


def test_app_click_without_files_asks_for_photos(exported_model):
    app = build_app(exported_model, display=False)
    app.classify_button.click()
    assert "Choose one or more photos" in app.status.value and app.cards.children == ()


def test_app_location_and_map_link_for_known_landmark(tmp_path):
    """A class with a known location shows its city and an OpenStreetMap link."""
    folder = "09.Golden_Gate_Bridge"
    info = landmark_info(folder)
    assert info is not None, f"{folder} missing from the landmark table"
    path = export_tiny_model(tmp_path / "m.pt", class_names=[folder, "99.Nowhere_Special", "98.Elsewhere"])
    app = build_app(path, display=False)
    _upload(app, [("red.jpg", jpeg_bytes(0, 3))])
    app.threshold.value = 0.0
    app.classify_button.click()
    text = _html_text(app.cards.children[0])
    assert info["city"] in text and "https://www.openstreetmap.org/?mlat=" in text


def test_app_without_model_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.delenv("LANDMARK_MODEL", raising=False)
    monkeypatch.setattr(app_module, "find_exported_model", lambda: None)
    app = build_app(display=False)
    text = _html_text(app.widget)
    assert "No exported model found" in text and "python -m src export" in text
    assert app.classify_button.disabled and app.upload.disabled


def test_app_with_corrupt_model_file_gives_one_line_reason(tmp_path):
    bad = tmp_path / "transfer_exported.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    app = build_app(bad, display=False)
    text = _html_text(app.widget)
    assert f"{bad}: not a TorchScript file" in text and "No exported model found" in text


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


# -- the notebook ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_app_notebook_runs_headless_in_quick_mode(tmp_path, exported_model, monkeypatch):
    """app.ipynb executes top to bottom (kernel python3) with a model and test photos, showing the failures."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    data = make_dataset(tmp_path / "landmark_images", n_classes=3, n_train=2, n_test=4)
    monkeypatch.setenv("LANDMARK_QUICK", "1")
    monkeypatch.setenv("LANDMARK_MODEL", str(exported_model))
    monkeypatch.setenv("LANDMARK_DATA", str(data))
    nb = nbformat.read(REPO_ROOT / "app.ipynb", as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    widget_views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views, "the app cell displays its widget"
    text = "".join(o.get("text", "") for o in outputs)
    assert "test photos right" in text  # the failures section ran on the test photos
