"""One decision, everywhere: a photo's landmark with a calibrated confidence, or "no known landmark".

:class:`Recognizer` = an exported model (through a backend) + its landmark index (``model.index.npz``, see
:mod:`src.index`) + the calibrated default threshold saved in it. ``predict``, ``tag``, ``evaluate``, the app and
the HTTP service all turn model outputs into answers here, so they agree on every photo.

Two methods, chosen by what the model file can do:
- ``retrieval`` (models that give embeddings, the transfer models): a photo takes the landmark whose reference
  photos are most similar to it; the similarity, calibrated, is the confidence. Landmarks can be enrolled
  without training.
- ``classifier`` (the scratch CNN, ensembles): the classifier's top probability, calibrated the same way.

Without an index file (a model exported before this change), the classifier's raw probability is used with
:data:`src.openset.FALLBACK_MIN_PROB`, never 0, and a warning says how to calibrate.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backends import as_backend, load_backend
from .helpers import file_sha256
from .index import LandmarkIndex, LandmarkIndexError, index_path_for, probe_images
from .landmarks import NO_LANDMARK, display_name, gps_contradicts, landmark_info
from .openset import FALLBACK_MIN_PROB, confidence, score_features
from .pipeline import stack_images

log = logging.getLogger(__name__)

RECORD_KEYS = ("path", "status", "landmark", "class", "prob", "city", "country", "lat", "lon", "gps_source",
               "top_k", "error", "threshold", "method", "note")
STATUSES = ("ok", "no_known_landmark", "error")
LOCATION_KEYS = ("name", "city", "country", "lat", "lon")


def shown_pair(prob: float, threshold: float, digits: int = 2, percent: bool = False) -> tuple[str, str]:
    """A confidence and the threshold as text, with as many decimals (``digits`` to 6) as it takes for the text to
    show which side of the threshold the confidence is: never "0.90 below the threshold 0.90"."""
    scale = 100.0 if percent else 1.0
    for d in range(digits, 7):
        a, b = f"{prob * scale:.{d}f}", f"{threshold * scale:.{d}f}"
        if (a == b) == (round(prob, 6) == round(threshold, 6)):
            break
    suffix = "%" if percent else ""
    return a + suffix, b + suffix


def fingerprint(backend) -> dict:
    """What identifies the model behind an index: its classes, embedding size and its outputs on fixed probe
    images (embeddings for retrieval models, probabilities for classifiers). Backends of the same model
    (TorchScript, ONNX) agree on it; another model does not."""
    probes = torch.from_numpy(probe_images(backend.resize_size))
    probs, embedding = backend(probes)
    probe = embedding if embedding is not None else probs
    return {"class_names": list(backend.class_names), "dim": int(embedding.shape[1]) if embedding is not None else 0,
            "arch": getattr(backend, "arch", ""), "resize_size": backend.resize_size, "img_size": backend.img_size,
            "probe": np.round(probe.numpy().astype(np.float64), 6).tolist()}


def class_info(key: str, locations: dict | None = None, source: str = "trained") -> dict:
    """``{"class", "name", "city", "country", "lat", "lon", "source"}`` for a class folder name: from the user's
    ``locations`` (``{name: {...}}``, matched by folder name or readable name) or ``src/landmarks.json``."""
    found = None
    if locations:
        bare = key.split(".", 1)[-1] if key[:1].isdigit() else key
        for candidate in (key, bare, bare.replace("_", " "), display_name(key)):
            if candidate in locations:
                found = dict(locations[candidate])
                break
    if found is None:
        found = landmark_info(key) or {}
    info = {"class": key, "name": found.get("name") or display_name(key), "city": found.get("city"),
            "country": found.get("country"), "lat": found.get("lat"), "lon": found.get("lon"), "source": source}
    for axis, limit in (("lat", 90), ("lon", 180)):
        value = info[axis]
        if value is not None and not (isinstance(value, (int, float)) and -limit <= float(value) <= limit):
            raise ValueError(f"{key}: {axis} {value!r} is not a number in [-{limit}, {limit}]")
    return info


def as_recognizer(model, device: str | torch.device = "cpu", backend: str = "auto") -> "Recognizer":
    """``model`` as a :class:`Recognizer`: one as it is, a path loaded (with its index), a loaded exported module or
    backend wrapped (no index)."""
    if isinstance(model, Recognizer):
        return model
    if isinstance(model, (str, os.PathLike)):
        return Recognizer.load(model, device=device, backend=backend)
    return Recognizer(model)


class Recognizer:
    """An exported model, its landmark index and its default threshold; see the module docstring.

    ``min_prob``: the threshold to use instead of the calibrated one (``--min-prob``).
    """

    def __init__(self, backend, index: LandmarkIndex | None = None, model_path: str | os.PathLike | None = None,
                 index_path: str | os.PathLike | None = None, min_prob: float | None = None):
        self.backend = as_backend(backend)
        self.index = index
        self.model_path = Path(model_path) if model_path is not None else getattr(self.backend, "path", None)
        self.index_path = Path(index_path) if index_path is not None else (
            index_path_for(self.model_path) if self.model_path is not None else None)
        self.override_min_prob = None if min_prob is None else float(min_prob)
        self._sha256: str | None = None

    # ---- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_path: str | os.PathLike, device: str | torch.device = "cpu", backend: str = "auto",
             min_prob: float | None = None, index_path: str | os.PathLike | None = None) -> "Recognizer":
        """The exported model at ``model_path`` and the index beside it (when there is one).

        A damaged index, or one made by another model, is a :class:`LandmarkIndexError` (one line), not ignored.
        """
        runner = load_backend(model_path, backend=backend, device=device)
        index_path = Path(index_path) if index_path is not None else index_path_for(model_path)
        index = None
        if index_path.exists():
            index = LandmarkIndex.load(index_path)
            index.check_model(fingerprint(runner), index_path)
        else:
            log.warning("%s has no landmark index (%s): using the classifier with the uncalibrated threshold %.2f; "
                        "calibrate it with: python -m src calibrate --model %s", model_path, index_path.name,
                        FALLBACK_MIN_PROB, model_path)
        return cls(runner, index, model_path, index_path, min_prob)

    # ---- what it is ------------------------------------------------------------------------------------------
    @property
    def resize_size(self) -> int:
        return int(self.backend.resize_size)

    @property
    def img_size(self) -> int:
        return int(self.backend.img_size)

    @property
    def calibration(self) -> dict:
        return self.index.calibration if self.index is not None else {}

    @property
    def method(self) -> str:
        return "retrieval" if self.index is not None and self.index.dim > 0 else "classifier"

    @property
    def default_min_prob(self) -> float:
        """The calibrated threshold saved with the model (or the fallback when it has none)."""
        return float(self.calibration.get("threshold", FALLBACK_MIN_PROB))

    @property
    def min_prob(self) -> float:
        return self.override_min_prob if self.override_min_prob is not None else self.default_min_prob

    @property
    def calibrated(self) -> bool:
        return "threshold" in self.calibration

    @property
    def model_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.model_path) if self.model_path and Path(self.model_path).is_file() else ""
        return self._sha256

    def decided_by(self, min_prob: float | None = None) -> str:
        """A short tag of what made a decision (model file, index version, threshold): when it changes, earlier
        answers may change too (``tag`` re-decides its rows)."""
        index_tag = f"{len(self.index)}r{len(self.index.classes)}c{int(self.index.created)}" if self.index else "none"
        threshold = self.min_prob if min_prob is None else float(min_prob)
        return f"{self.model_sha256[:12]}/{index_tag}/{threshold:.4f}"

    def provenance(self, min_prob: float | None = None) -> dict:
        return {"tool": "landmark-tagger", "model": Path(self.model_path).name if self.model_path else "",
                "model_sha256": self.model_sha256, "method": self.method,
                "threshold": self.min_prob if min_prob is None else float(min_prob),
                "threshold_note": self.threshold_note(min_prob)}

    def threshold_info(self, min_prob: float | None = None) -> dict:
        """Where the threshold in use comes from, for every place that shows a decision: ``{"threshold",
        "calibrated" (False for a fallback, a missing index or a hand-set value), "source" (short), "note" (one
        line)}``. A photo gets a landmark when its confidence >= the threshold (both rounded to 6 decimals)."""
        cal = self.calibration
        threshold = self.min_prob if min_prob is None else float(min_prob)
        source = str(cal.get("threshold_source") or "")
        calibrated = self.calibrated and not source.startswith(("fallback", "uncalibrated"))
        if min_prob is not None or self.override_min_prob is not None:
            own = (f"calibrated {self.default_min_prob:.3f}" if calibrated else
                   f"UNCALIBRATED {self.default_min_prob:.2f}")
            return {"threshold": threshold, "calibrated": False, "source": "set by hand",
                    "note": f"threshold {threshold:.3f} set by hand (--min-prob), not calibrated; the model's own is "
                            f"{own}"}
        if not calibrated:
            why = source or (f"no landmark index beside {Path(self.model_path).name}" if self.model_path and
                             self.index is None else "no calibration saved with the model")
            return {"threshold": threshold, "calibrated": False, "source": why,
                    "note": f"threshold {threshold:.2f} is UNCALIBRATED: {why}; how often a photo without a known "
                            f"landmark gets one is unknown; calibrate with photos without landmarks: python -m src "
                            f"calibrate --model {self.model_path or 'MODEL'} --negatives DIR"}
        sources = cal.get("sources") or {}
        if sources:
            seen = ", ".join(f"{n} {name}" for name, n in sources.items())
        else:
            seen = (f"{cal.get('negatives', '?')} photos without landmarks"
                    + (f" ({Path(cal['negatives_dir']).name}/)" if cal.get("negatives_dir") else "")
                    + (f" and {cal['known']} {cal.get('known_source', 'known-landmark photos')}" if cal.get("known")
                       else ""))
        rates = cal.get("held_out_false_rate") or {}
        measured = cal.get("measured_on_calibration") or {}
        if rates:
            rate = "held out: " + ", ".join(f"{r:.1%} of {name} given a landmark" for name, r in rates.items())
        elif measured:
            rate = (f"{measured.get('negatives_given_landmark', 0):.1%} of them given a landmark (measured on the "
                    f"calibration photos themselves)")
        else:
            rate = "false rate not measured"
        promise = cal.get("promise")
        promised = f"; bound: at most {promise:.1%} given a landmark" if isinstance(promise, (int, float)) else ""
        return {"threshold": threshold, "calibrated": True, "source": source or "calibrated",
                "note": f"threshold {threshold:.3f} calibrated on {seen}; {rate}{promised}"}

    def threshold_note(self, min_prob: float | None = None) -> str:
        """One line on the threshold in use: calibrated on what and its measured false rate, or UNCALIBRATED."""
        return self.threshold_info(min_prob)["note"]

    def classes(self) -> list[dict]:
        """The classes a photo can be given, each ``{"class", "name", "city", "country", "lat", "lon", "source"}``."""
        if self.method == "retrieval":
            return [dict(c) for c in self.index.classes]
        return [class_info(c) for c in self.backend.class_names]

    def landmarks(self) -> list[dict]:
        """What it knows, with how many reference photos each landmark has (0 for a classifier's classes)."""
        counts = self.index.counts() if self.method == "retrieval" else np.zeros(len(self.backend.class_names), int)
        return [dict(c, references=int(n)) for c, n in zip(self.classes(), counts)]

    # ---- deciding --------------------------------------------------------------------------------------------
    def scores(self, probs: torch.Tensor, embedding: torch.Tensor | None) -> np.ndarray:
        """Raw per-class scores ``[B, C]`` (similarities for retrieval, probabilities for the classifier)."""
        if self.method == "retrieval":
            if embedding is None:
                raise ValueError("this backend gives no embeddings, but the model's index needs them")
            return self.index.class_scores(embedding.numpy())
        return probs.numpy().astype(np.float64)

    def confidences(self, scores: np.ndarray, probs: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Calibrated confidences ``[B, C]`` from raw scores: each class's score and its margin over the best other
        class (:func:`src.openset.score_features`), and for retrieval the classifier's probability of the class
        (``probs``), through the fitted logistic. Enrolled landmarks, which the classifier does not know, go
        through the calibration's two-feature model, set to the same threshold."""
        model = self.calibration.get("confidence")
        if not model:
            return np.clip(scores, 0.0, 1.0)
        feats = score_features(scores)
        if len(model["weights"]) == 2:
            return confidence(feats.reshape(-1, 2), model).reshape(scores.shape)
        if probs is None:
            raise ValueError("this model's calibration needs the classifier's probabilities as well")
        probs = np.asarray(probs, dtype=np.float64)
        column = {name: i for i, name in enumerate(self.backend.class_names)}
        own = [(j, column[c["class"]]) for j, c in enumerate(self.classes())
               if c.get("source", "trained") == "trained" and c["class"] in column]
        conf = np.empty(scores.shape, dtype=np.float64)
        if own:
            j, i = (np.array(v) for v in zip(*own))
            conf[:, j] = confidence(np.concatenate([feats[:, j], probs[:, i, None]], axis=-1).reshape(-1, 3),
                                    model).reshape(len(scores), len(j))
        rest = np.setdiff1d(np.arange(scores.shape[1]), [j for j, _ in own])
        if len(rest):
            conf[:, rest] = confidence(feats[:, rest].reshape(-1, 2), self.calibration["confidence_enrolled"]
                                       ).reshape(len(scores), len(rest))
        return conf

    def decide(self, probs: torch.Tensor, embedding: torch.Tensor | None, paths: Sequence[str], k: int = 5,
               min_prob: float | None = None, gps: Sequence | None = None) -> list[dict]:
        """Records for a batch of model outputs (``probs [B, C]``, ``embedding [B, D]`` or None)."""
        conf = self.confidences(self.scores(probs, embedding), probs)
        classes = self.classes()
        threshold = self.min_prob if min_prob is None else float(min_prob)
        k = max(1, min(int(k), len(classes)))
        records = []
        for i, path in enumerate(paths):
            order = np.argsort(-conf[i], kind="stable")[:k]
            top = [{"class": classes[j]["class"], "name": classes[j]["name"], "prob": round(float(conf[i, j]), 6),
                    **{key: classes[j][key] for key in ("city", "country", "lat", "lon")}} for j in order]
            records.append(self._record(str(path), top, threshold, gps[i] if gps is not None else None))
        return records

    def _record(self, path: str, top: list[dict], threshold: float, gps) -> dict:
        # The one rule, everywhere: a landmark when confidence >= threshold, both as recorded (6 decimals), so a
        # record's own prob and threshold always show why it was decided so.
        threshold = round(float(threshold), 6)
        record = dict.fromkeys(RECORD_KEYS)
        record.update(path=path, top_k=top, threshold=threshold, method=self.method)
        best = top[0]
        record["prob"] = best["prob"]
        if best["prob"] >= threshold:
            record.update(status="ok", landmark=best["name"], city=best["city"], country=best["country"])
            record["class"] = best["class"]
            if best["lat"] is not None:
                record.update(lat=best["lat"], lon=best["lon"], gps_source="landmark")
        else:  # not sure: say so, and give no place
            record.update(status="no_known_landmark", landmark=NO_LANDMARK)
        if gps is not None:  # the camera's own position beats any inferred one
            record.update(lat=gps[0], lon=gps[1], gps_source="exif")
            far = gps_contradicts(best, gps) if record["status"] == "ok" else None
            if far is not None:  # the photo was taken far from the landmark its pixels suggest: not that one
                record.update(status="no_known_landmark", landmark=NO_LANDMARK, city=None, country=None,
                              note=far, **{"class": None})
        return record

    def records(self, batch: torch.Tensor, paths: Sequence[str], k: int = 5, min_prob: float | None = None,
                gps: Sequence | None = None) -> list[dict]:
        """Records for a batch of photos, uint8 ``[B, 3, R, R]`` from :func:`src.pipeline.decode_for_batch`."""
        probs, embedding = self.backend(batch)
        return self.decide(probs, embedding, paths, k, min_prob, gps)

    def error_record(self, path: str, message: str) -> dict:
        record = dict.fromkeys(RECORD_KEYS)
        record.update(path=str(path), status="error", top_k=[], error=message, method=self.method)
        return record

    # ---- adding and removing landmarks -----------------------------------------------------------------------
    def _require_index(self) -> LandmarkIndex:
        if self.method != "retrieval":
            what = "gives no embeddings (a scratch CNN or an ensemble of them)" if not self.backend.has_embedding else \
                "has no landmark index yet (make one with: python -m src calibrate --model MODEL)"
            raise LandmarkIndexError(f"{self.model_path}: cannot add or remove landmarks: the model {what}")
        return self.index

    def embed(self, images: Sequence[torch.Tensor], batch_size: int = 16) -> np.ndarray:
        """Embeddings ``[n, D]`` of decoded photos (uint8 ``[3, R, R]`` each)."""
        out = []
        for start in range(0, len(images), batch_size):
            _, embedding = self.backend(stack_images(list(images[start:start + batch_size])))
            out.append(embedding.numpy())
        return np.concatenate(out) if out else np.zeros((0, self.index.dim if self.index else 0), np.float32)

    def enroll(self, name: str, images: Sequence[torch.Tensor], refs: Sequence[str] | None = None,
               location: dict | None = None, save: bool = True) -> dict:
        """Add a landmark (or more photos of one) from decoded photos; saved to the index file atomically."""
        index = self._require_index()
        if not images:
            raise ValueError(f"{name}: no usable photos to enrol")
        key = str(name).strip()
        if not key:
            raise ValueError("a landmark needs a name")
        info = class_info(key, {key: location} if location else None, source="enrolled")
        if location and location.get("name"):
            info["name"] = str(location["name"])
        refs = list(refs) if refs is not None else [f"{key}#{i}" for i in range(len(images))]
        number = index.add(info, self.embed(images), refs)
        if save:
            self.save()
        return dict(index.classes[number], references=int(index.counts()[number]))

    def remove(self, name: str, save: bool = True) -> dict:
        removed = self._require_index().remove(name)
        if save:
            self.save()
        return removed

    def save(self) -> Path:
        if self.index is None or self.index_path is None:
            raise LandmarkIndexError("no landmark index to save")
        return self.index.save(self.index_path)
