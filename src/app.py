"""The web app (``app.ipynb``, served with Voila): upload photos, see the top-k landmarks and where they are.

Everything here runs without a browser: :func:`classify_image_bytes` is the per-photo logic and
:func:`build_app` returns the ipywidgets UI, which tests drive by setting the upload's value and clicking.
No traceback ever reaches the page: every per-file problem becomes that file's one-line message.
"""
from __future__ import annotations

import html
import io
import logging
import os
from pathlib import Path

import torch
from PIL import Image

from .helpers import CHECKPOINTS_DIR, PROJECT_ROOT
from .images import ImageLoadError
from .landmarks import NO_LANDMARK, format_latlon
from .predictor import SCRATCH_EXPORT_NAME, TRANSFER_EXPORT_NAME, load_image_tensor, prepare_for_batch
from .recognizer import Recognizer, as_recognizer, shown_pair

log = logging.getLogger(__name__)

MODEL_ENV_VAR = "LANDMARK_MODEL"
# Best first: the transfer-learning model beats the scratch CNN whenever both exist.
EXPORTED_MODEL_NAMES = (TRANSFER_EXPORT_NAME, SCRATCH_EXPORT_NAME)
DEFAULT_K = 3
MAX_K = 5
THUMBNAIL_SIZE = 192
NO_LANDMARK_VERDICT = NO_LANDMARK  # "no known landmark", as the command line says it
DEFAULT_RESIZE = 256  # for exported files that do not carry their resize_size


class ModelLoadError(RuntimeError):
    """An exported model that cannot be used; the message is one line naming the file."""


# --------------------------------------------------------------------------------------------------------------
# Finding and loading the model
# --------------------------------------------------------------------------------------------------------------

def find_exported_model(checkpoints_dir: str | os.PathLike = CHECKPOINTS_DIR) -> Path | None:
    """The exported model the app uses: ``$LANDMARK_MODEL`` if set, else transfer, else scratch, else None."""
    override = os.environ.get(MODEL_ENV_VAR)
    if override:
        return Path(override).expanduser()
    for name in EXPORTED_MODEL_NAMES:
        candidate = Path(checkpoints_dir) / name
        if candidate.is_file():
            return candidate
    return None


def no_model_message(checkpoints_dir: str | os.PathLike = CHECKPOINTS_DIR) -> str:
    """What to do when there is no exported model yet (plain text, several lines)."""
    return (
        f"No exported model found in {checkpoints_dir} (looked for {' or '.join(EXPORTED_MODEL_NAMES)}).\n"
        "Make one by running transfer_learning.ipynb (or cnn_from_scratch.ipynb) top to bottom, or from the\n"
        "command line in the project folder (see `python -m src train --help` for the choices):\n"
        "    .venv/bin/python -m src train --arch scratch\n"
        "    .venv/bin/python -m src export --checkpoint checkpoints/scratch/best.pt\n"
        f"then reload this page. ${MODEL_ENV_VAR}=path/to/model.pt points the app at any exported file."
    )


def load_model(path: str | os.PathLike) -> Recognizer:
    """Load an exported model (and its landmark index) on the CPU, ready to decide; one-line error when unusable."""
    path = Path(path)
    try:
        model = Recognizer.load(path)
    except Exception as exc:  # corrupt, truncated or foreign files: one line naming the file
        text = " ".join(str(exc).split())[:400]
        raise ModelLoadError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    if not model.classes():
        raise ModelLoadError(f"{path}: the model knows no landmarks; export it with `python -m src export`")
    return model


def map_link(lat: float, lon: float, zoom: int = 12) -> str:
    """An OpenStreetMap link centred on a point, with a marker."""
    return f"https://www.openstreetmap.org/?mlat={lat:.5f}&mlon={lon:.5f}#map={zoom}/{lat:.5f}/{lon:.5f}"


# --------------------------------------------------------------------------------------------------------------
# Classifying one photo
# --------------------------------------------------------------------------------------------------------------

def load_photo(model, source, name: str | None = None) -> torch.Tensor:
    """A photo (path or bytes) as the uint8 ``[3, H, W]`` tensor the exported model takes, decoded as training
    and ``python -m src predict`` do. Raises ``ImageLoadError`` for a file that is not a usable photo."""
    return load_image_tensor(source, int(getattr(model, "resize_size", DEFAULT_RESIZE)), name=name)


def tensor_to_image(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def certainty_words(prob: float, threshold: float) -> tuple[str, str]:
    """How sure, in words a person reads at a glance, and a colour: the calibrated confidence against the
    threshold."""
    if prob < threshold:  # the one rule: a landmark when confidence >= threshold
        return "not sure enough to say", "#757575"
    if prob - threshold < 0.05:  # whatever the number, a photo at the threshold is a borderline call
        return ("at the threshold: check it" if prob == threshold else "just above the threshold: check it"), \
            "#ef6c00"
    if prob >= 0.9:
        return "very sure", "#2e7d32"
    if prob >= 0.6:
        return "fairly sure", "#558b2f"
    return "just above the threshold: check it", "#ef6c00"


def summarize(record: dict) -> dict:
    """The card's view of a record: top-k entries (name, confidence, location) and the verdict."""
    top = [{"class_name": e["class"], "name": e["name"], "prob": float(e["prob"]),
            "location": ({key: e[key] for key in ("city", "country", "lat", "lon")} if e["lat"] is not None
                         else None)}
           for e in record["top_k"]]
    return {"top": top, "known": record["status"] == "ok", "verdict": record["landmark"],
            "threshold": float(record["threshold"]), "record": record}


def classify_image_bytes(model, name: str, data: bytes, k: int = DEFAULT_K, threshold: float | None = None) -> dict:
    """Decide one uploaded file, as ``python -m src predict`` does (:class:`src.recognizer.Recognizer`).

    ``threshold`` None: the model's calibrated one. Returns ``{"name", "error": None, "image": PIL image (as
    decoded for the model), "outputs": (probs, embedding), "top": [...], "known", "verdict", "threshold"}``; a
    file that is not a usable photo gives ``{"name", "error": "<name>: <reason>"}`` (one line).
    """
    recognizer = as_recognizer(model)
    try:
        image = load_photo(recognizer, data, name=name)
        batch = prepare_for_batch(image, recognizer.resize_size, recognizer.img_size).unsqueeze(0)
        outputs = recognizer.backend(batch)
        record = recognizer.decide(*outputs, [name], k, threshold)[0]
        img = tensor_to_image(image)
    except ImageLoadError as exc:
        return {"name": name, "error": str(exc)}
    except Exception as exc:  # a model failure on one file must not lose the others' results
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return {"name": name, "error": f"{name}: could not classify ({reason})"}
    result = {"name": name, "error": None, "image": img, "outputs": outputs}
    result.update(summarize(record))
    return result


def thumbnail_jpeg(img: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A small JPEG of the decoded photo (re-encoded: the page never gets the raw upload back, whatever it was)."""
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` for each file of a ``FileUpload`` value (ipywidgets 8: tuple of dicts; 7: dict)."""
    if isinstance(value, dict):  # ipywidgets 7: {name: {"content": ..., ...}}
        value = [{"name": name, **meta} for name, meta in value.items()]
    files = []
    for item in value or ():
        content = item.get("content", b"")
        files.append((str(item.get("name") or "unnamed file"), bytes(content)))
    return files


# --------------------------------------------------------------------------------------------------------------
# The widgets
# --------------------------------------------------------------------------------------------------------------

def _short_path(path: Path) -> str:
    """``checkpoints/x.pt`` for a file inside the project, else the path as given."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def percent(p: float) -> str:
    return f"{100 * p:.1f}%"


class LandmarkApp:
    """Upload, controls, Classify button and one result card per photo. ``.widget`` is what to display."""

    def __init__(self, model=None, model_path: str | os.PathLike | None = None, message: str | None = None):
        import ipywidgets as widgets  # noqa: PLC0415 - only the app needs ipywidgets

        self._w = widgets
        self.model = model
        self.model_path = Path(model_path) if model_path is not None else None
        self.results: list[dict] = []
        self.title = widgets.HTML("<p style='margin:2px 0 6px 0'><b>Landmark Tagger</b> &mdash; which world "
                                  "landmark is in your photo, and where is it? Choose one or more photos and "
                                  "press <b>Classify</b>.</p>")
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="Choose photos",
                                         layout=widgets.Layout(width="auto"))
        self.k = widgets.IntSlider(value=DEFAULT_K, min=1, max=MAX_K, step=1, description="Top k",
                                   continuous_update=False)
        calibrated = model.min_prob if model is not None else 0.5
        self.threshold = widgets.FloatSlider(value=round(calibrated, 3), min=0.0, max=1.0, step=0.01,
                                             description="Threshold", readout_format=".2f",
                                             continuous_update=False,
                                             tooltip="below this confidence the verdict is "
                                                     f"'{NO_LANDMARK_VERDICT}' (default: the model's own)")
        self.classify_button = widgets.Button(description="Classify", button_style="primary", icon="search",
                                              tooltip="Classify the chosen photos")
        self.status = widgets.HTML()
        self.cards = widgets.VBox()
        self.upload.observe(self._on_upload, names="value")
        self.classify_button.on_click(self._on_click)
        self.k.observe(self._on_controls, names="value")
        self.threshold.observe(self._on_controls, names="value")

        if model is None:
            text = message or no_model_message()
            self.status.value = (f"<div style='font-family:monospace;white-space:pre-wrap;line-height:1.5'>"
                                 f"{html.escape(text)}</div>")
            for w in (self.upload, self.k, self.threshold, self.classify_button):
                w.disabled = True
            self.widget = widgets.VBox([self.title, self.status])
            return
        n = len(model.classes())
        self.k.max = min(MAX_K, n)
        self.k.value = min(DEFAULT_K, n)
        self.model_info = widgets.HTML(self._model_info())
        controls = widgets.HBox([self.upload, self.classify_button], layout=widgets.Layout(align_items="center"))
        sliders = widgets.HBox([self.k, self.threshold])
        self.enroll_panel = self._enroll_panel()
        self.widget = widgets.VBox([self.title, controls, sliders, self.model_info, self.status, self.cards,
                                    self.enroll_panel])

    def _model_info(self) -> str:
        model = self.model
        where = f" from <code>{html.escape(_short_path(self.model_path))}</code>" if self.model_path else ""
        info = model.threshold_info()
        how = html.escape(info["note"])
        if not info["calibrated"]:
            how = f"<b style='color:#b00020'>{how}</b>"
        return (f"<small>Model{where}: knows {len(model.classes())} landmarks ({model.method}). Default {how}. "
                f"A photo gets a landmark when its confidence is at or above the threshold. Confidences are the "
                f"chance that the answer is right.</small>")

    def _threshold_words(self, threshold: float) -> str:
        """Said with every verdict: whether the threshold it was decided with is calibrated."""
        model = self.model
        if abs(threshold - model.default_min_prob) > 5e-7:
            return "threshold moved by hand: not calibrated"
        if not model.threshold_info()["calibrated"]:
            return "UNCALIBRATED threshold: its false rate is unknown"
        return "calibrated threshold"

    def _enroll_panel(self):
        """"Add a landmark": a name, where it is and a few photos; the next photo of it is recognised."""
        w = self._w
        self.new_name = w.Text(description="Name", placeholder="e.g. Big Ben")
        self.new_city = w.Text(description="City", placeholder="London")
        self.new_country = w.Text(description="Country", placeholder="United Kingdom")
        self.new_lat = w.Text(description="Latitude", placeholder="51.5007")
        self.new_lon = w.Text(description="Longitude", placeholder="-0.1246")
        self.new_photos = w.FileUpload(accept="image/*", multiple=True, description="Its photos")
        self.add_button = w.Button(description="Add landmark", icon="plus")
        self.enroll_status = w.HTML()
        self.add_button.on_click(self._on_add)
        if self.model.method != "retrieval":
            self.enroll_status.value = ("<small>This model cannot learn new landmarks without training (it gives no "
                                        "embeddings, or has no landmark index).</small>")
            for x in (self.new_name, self.new_city, self.new_country, self.new_lat, self.new_lon, self.new_photos,
                      self.add_button):
                x.disabled = True
        box = w.VBox([w.HTML("<small>A few photos (3 or more) of a landmark the model does not know, its name and "
                             "where it is: the next photo of it is recognised. No training.</small>"),
                      self.new_name, w.HBox([self.new_city, self.new_country]), w.HBox([self.new_lat, self.new_lon]),
                      w.HBox([self.new_photos, self.add_button]), self.enroll_status])
        panel = w.Accordion(children=[box])
        panel.set_title(0, "Add a landmark")
        panel.selected_index = None
        return panel

    def _on_add(self, _button=None) -> None:
        try:
            self.enroll_status.value = html.escape(self.add_landmark())
        except Exception as exc:  # a message on the page, never a traceback
            log.exception("adding a landmark failed")
            self.enroll_status.value = f"<span style='color:#b00020'>{html.escape(' '.join(str(exc).split()))}</span>"

    def add_landmark(self) -> str:
        """Enrol the landmark described by the panel's fields; returns what happened (one line)."""
        name = self.new_name.value.strip()
        if not name:
            raise ValueError("give the landmark a name")
        location = {"name": name, "city": self.new_city.value.strip() or None,
                    "country": self.new_country.value.strip() or None, "lat": None, "lon": None}
        if self.new_lat.value.strip() or self.new_lon.value.strip():
            try:
                location["lat"], location["lon"] = float(self.new_lat.value), float(self.new_lon.value)
            except ValueError:
                raise ValueError("latitude and longitude must be numbers, e.g. 51.5007 and -0.1246") from None
        images, problems = [], []
        for file_name, data in uploaded_files(self.new_photos.value):
            try:
                image = load_photo(self.model, data, name=file_name)
                images.append(prepare_for_batch(image, self.model.resize_size, self.model.img_size))
            except ImageLoadError as exc:
                problems.append(str(exc))
        if not images:
            raise ValueError("choose at least one photo of it" + (f" ({problems[0]})" if problems else ""))
        key = "_".join(name.split())
        info = self.model.enroll(key, images, location=location)
        self.k.max = min(MAX_K, len(self.model.classes()))
        self.model_info.value = self._model_info()
        self.new_photos.value = ()
        where = ", ".join(str(x) for x in (info["city"], info["country"]) if x) or "no location given"
        return (f"Added {info['name']} ({info['references']} photos, {where})."
                + (f" {len(problems)} files skipped: {problems[0]}" if problems else ""))

    # -- event handlers: none may raise (an exception in a callback would put a traceback on the page) ---------

    def _on_upload(self, change) -> None:
        try:
            value = change["new"] or ()
            n = len(value)
            self.status.value = f"{n} photo{'s' if n != 1 else ''} chosen. Press <b>Classify</b>." if n else ""
        except Exception:
            log.exception("upload handler failed")

    def _on_click(self, _button=None) -> None:
        try:
            self.classify()
        except Exception as exc:
            log.exception("classify failed")
            self.status.value = f"Something went wrong: {html.escape(' '.join(str(exc).split()))}"
            self.classify_button.disabled = False

    def _on_controls(self, _change) -> None:
        try:
            self.render()
        except Exception:
            log.exception("re-render failed")

    # -- actions ----------------------------------------------------------------------------------------------

    def classify(self) -> list[dict]:
        """Classify every uploaded file and show one card each; returns the per-file results."""
        files = uploaded_files(self.upload.value)
        if not files:
            self.status.value = "Choose one or more photos first."
            self.results = []
            self.render()
            return self.results
        self.classify_button.disabled = True
        self.results = []
        self.cards.children = ()
        try:
            for i, (name, data) in enumerate(files):
                self.status.value = f"Classifying {i + 1} of {len(files)}: {html.escape(name)}…"
                result = classify_image_bytes(self.model, name, data, self.k.value, self.threshold.value)
                self.results.append(result)
                self.cards.children = (*self.cards.children, self._card(result))  # shown as each one is done
        finally:
            self.classify_button.disabled = False
        n_bad = sum(r["error"] is not None for r in self.results)
        summary = f"Classified {len(files) - n_bad} of {len(files)} file{'s' if len(files) != 1 else ''}."
        if n_bad:
            summary += f" {n_bad} could not be used (see {'their messages' if n_bad > 1 else 'its message'} below)."
        self.status.value = summary
        return self.results

    def render(self) -> None:
        """(Re)build the result cards from the stored results with the current k and threshold."""
        for r in self.results:
            if r["error"] is None:
                record = self.model.decide(*r["outputs"], [r["name"]], self.k.value, self.threshold.value)[0]
                r.update(summarize(record))
        self.cards.children = [self._card(r) for r in self.results]

    def _card(self, r: dict):
        w = self._w
        box = w.Layout(border="1px solid #ddd", padding="8px", margin="0 0 10px 0", align_items="flex-start")
        title = f"<b>{html.escape(r['name'])}</b>"
        if r["error"] is not None:
            return w.HBox([w.HTML(f"{title}<br><span style='color:#b00020'>&#9888; "
                                  f"{html.escape(r['error'])}</span>")], layout=box)
        if "thumbnail" not in r:
            r["thumbnail"] = thumbnail_jpeg(r["image"])
        thumb = w.Image(value=r["thumbnail"], format="jpeg",
                        layout=w.Layout(max_width=f"{THUMBNAIL_SIZE}px", max_height=f"{THUMBNAIL_SIZE}px",
                                        object_fit="contain", margin="0 14px 0 0"))
        best = r["top"][0]
        words, colour = certainty_words(best["prob"], r["threshold"])
        prob, threshold = shown_pair(best["prob"], r["threshold"], digits=1, percent=True)
        kind = html.escape(self._threshold_words(r["threshold"]))
        if r["known"]:
            verdict = (f"<span style='font-size:1.15em;color:{colour}'>&#10003; <b>{html.escape(best['name'])}</b>"
                       f"</span> <span style='color:{colour}'>&mdash; {words} ({prob})</span> "
                       f"<small class='lt-threshold'>(threshold {threshold}, {kind})</small>")
        else:
            verdict = (f"<span style='font-size:1.15em;color:{colour}'>&#10007; <b>{NO_LANDMARK_VERDICT}</b></span> "
                       f"<small class='lt-threshold'>(best guess {html.escape(best['name'])} at {prob}, below the "
                       f"{threshold} threshold, {kind}: not sure enough to say)</small>")
        rows = []
        for entry in r["top"]:
            rows.append(w.HBox([
                w.HTML(html.escape(entry["name"]), layout=w.Layout(width="230px")),
                w.FloatProgress(value=entry["prob"], min=0.0, max=1.0, layout=w.Layout(width="200px"),
                                bar_style="success" if entry is best and r["known"] else "info"),
                w.HTML(percent(entry["prob"]), layout=w.Layout(width="60px")),
            ], layout=w.Layout(align_items="center")))
        loc = best["location"] if r["known"] else None
        if loc:
            place = ", ".join(str(x) for x in (loc.get("city"), loc.get("country")) if x)
            lat, lon = float(loc["lat"]), float(loc["lon"])
            where = (f"Where: <b>{html.escape(place)}</b> ({format_latlon(lat, lon)}) &mdash; "
                     f"<a href='{html.escape(map_link(lat, lon))}' target='_blank' rel='noopener' "
                     f"style='color:#1565c0;text-decoration:underline'>open the map</a>")
        elif r["known"]:
            where = "<small>location not in the landmark table</small>"
        else:
            where = "<small>no location: the model is not sure enough</small>"
        details = w.VBox([w.HTML(f"{title}<br>{verdict}"), *rows, w.HTML(where)])
        return w.HBox([thumb, details], layout=box)


def build_app(model_path: str | os.PathLike | None = None, display: bool = True):
    """Load the best exported model (or ``model_path``) and return the app's widget (displayed in a notebook).

    Without a model the widget says how to make one; an unusable model file gives its one-line error.
    """
    path = Path(model_path) if model_path is not None else find_exported_model()
    if path is None:
        app = LandmarkApp(message=no_model_message())
    else:
        try:
            app = LandmarkApp(load_model(path), model_path=path)
        except ModelLoadError as exc:
            app = LandmarkApp(message=f"{exc}\n\n{no_model_message()}")
    if display:
        try:
            from IPython.display import display as ipy_display  # noqa: PLC0415

            ipy_display(app.widget)
        except ImportError:
            pass
    return app
