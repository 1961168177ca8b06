"""Build a model's landmark index and calibrate its default threshold: ``python -m src calibrate`` (``export``
does it too when it knows the data set).

On held-out photos only: the validation photos of the known landmarks (the ones the model did not train on;
each searched with its own reference left out) and the calibration half of a folder of photos that show no
landmark (:func:`src.openset.split_negatives`; the other half is kept for measuring). The threshold is the least
one at which at most ``--max-false-rate`` of those photos get a landmark.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from .backends import load_backend
from .data import load_landmark_data
from .helpers import PROJECT_ROOT
from .index import LandmarkIndex, index_path_for
from .openset import (
    DEFAULT_MAX_FALSE_RATE,
    FALLBACK_MIN_PROB,
    auroc,
    choose_threshold,
    confidence,
    fit_confidence,
    shift_to_threshold,
    split_negatives,
    top_features,
    without_class,
)
from .pipeline import iter_predictions
from .recognizer import class_info, fingerprint

log = logging.getLogger(__name__)

NEGATIVES_ENV_VAR = "LANDMARK_NEGATIVES"


def default_negatives_dir() -> Path | None:
    """``$LANDMARK_NEGATIVES``, else ``../shared/data/everyday`` beside the project when present, else None."""
    override = os.environ.get(NEGATIVES_ENV_VAR)
    if override:
        return None if override.lower() == "none" else Path(override).expanduser()
    candidate = PROJECT_ROOT.parent / "shared" / "data" / "everyday"
    return candidate if candidate.is_dir() else None


def run_model(backend, paths, desc: str, progress: bool = True):
    """``(probs [N, C], embeddings [N, D] or None, usable mask [N])`` of photo files (unreadable ones skipped)."""
    probs, embeddings, ok = [], [], []
    for result in iter_predictions(backend, paths, progress=progress, desc=desc):
        ok.append(result.probs is not None)
        if result.probs is None:
            log.warning("skipping %s", result.error)
            continue
        probs.append(result.probs.numpy())
        if result.embedding is not None:
            embeddings.append(result.embedding.numpy())
    n_classes = len(backend.class_names)
    return (np.stack(probs) if probs else np.zeros((0, n_classes), np.float32),
            np.stack(embeddings) if embeddings else None, np.array(ok, dtype=bool))


def build_index(backend, data_dir: str | os.PathLike | None, negatives: str | os.PathLike | None = None,
                valid_size: float = 0.2, seed: int = 42, max_false_rate: float = DEFAULT_MAX_FALSE_RATE,
                progress: bool = True) -> LandmarkIndex:
    """The index of a model's own landmarks (all training photos of ``data_dir`` as references; none for a
    model without embeddings) with its calibration; see the module docstring."""
    data = load_landmark_data(data_dir, valid_size=valid_size, seed=seed)
    model_classes = list(backend.class_names)
    missing = sorted(set(model_classes) - set(data.class_names))
    if missing:
        raise ValueError(f"{data.root}: has no training photos of the model's classes {', '.join(missing[:5])}; "
                         f"calibrate with the data set the model was trained on")
    number = {name: i for i, name in enumerate(model_classes)}
    samples = [(p, number[data.class_names[label]]) for p, label in data.train + data.valid
               if data.class_names[label] in number]
    n_train = sum(1 for _, label in data.train if data.class_names[label] in number)
    probs, embeddings, ok = run_model(backend, [p for p, _ in samples], "Reference photos", progress)
    samples = [s for s, good in zip(samples, ok) if good]
    labels = np.array([label for _, label in samples], dtype=np.int64)
    is_valid = np.arange(len(ok))[ok] >= n_train
    classes = [class_info(c) for c in model_classes]
    retrieval = embeddings is not None
    index = LandmarkIndex(embeddings if retrieval else np.zeros((0, 0), np.float32),
                          labels if retrieval else np.zeros(0, np.int64), classes,
                          [Path(p).relative_to(data.root).as_posix() for p, _ in samples] if retrieval else [],
                          fingerprint(backend))
    # Known photos the model did not train on: the validation split (or, after a refit on every photo, all
    # training photos: optimistic, and said so).
    known = is_valid if is_valid.any() else np.ones(len(samples), dtype=bool)
    known_source = "validation photos" if is_valid.any() else "training photos (no validation split: optimistic)"
    ids = np.flatnonzero(known)
    if retrieval:
        # every reference looked at (exact scores of every landmark: the left-out ones below depend on them)
        known_scores = index.class_scores(embeddings[ids], exclude=list(ids), neighbours=len(index))
    else:
        known_scores = probs[ids].astype(np.float64)
    known_right = known_scores.argmax(axis=1) == labels[ids]
    # The same photos as landmarks the model does not know: each scored with its own landmark left out. Photos of
    # unknown landmarks resemble known ones far more than everyday photos do; without these, the threshold would
    # give a wrong place to most of them.
    if retrieval:
        held_out = known_scores.copy()
        held_out[np.arange(len(ids)), labels[ids]] = -1.0
    else:  # a classifier's probabilities without the true class, renormalised
        held_out = without_class(known_scores, labels[ids])
    # Retrieval: the classifier's probability of the retrieved landmark is a third feature (see top_features); for
    # the held-out photos, the classifier's belief without their own landmark.
    known_support = probs[ids].astype(np.float64) if retrieval else None
    held_support = without_class(probs[ids], labels[ids]) if retrieval else None
    features_used = ["score", "margin over the best other landmark"]
    calibration = {"method": "retrieval" if retrieval else "classifier", "max_false_rate": float(max_false_rate),
                   "features": features_used + (["the classifier's probability of that landmark"] if retrieval else []),
                   "known": int(len(ids)), "known_source": known_source, "data_dir": str(data.root),
                   "known_top1": float(known_right.mean()) if len(ids) else None}
    negative_parts = [top_features(held_out, held_support)] if len(ids) and len(model_classes) > 1 else []
    negatives = Path(negatives) if negatives is not None else None
    if negatives is not None:
        neg_paths = split_negatives(negatives)["calibrate"]
        if not neg_paths:
            raise ValueError(f"{negatives}: no photos to calibrate 'no known landmark' on")
        neg_probs, neg_embeddings, _ = run_model(backend, neg_paths, "Photos without landmarks", progress)
        neg_scores = index.class_scores(neg_embeddings, neighbours=len(index)) if retrieval \
            else neg_probs.astype(np.float64)
        negative_parts.insert(0, top_features(neg_scores, neg_probs.astype(np.float64) if retrieval else None))
        calibration.update(negatives=int(len(neg_scores)), negatives_dir=str(negatives),
                           unknown_landmarks=int(len(ids)))
    known_features = top_features(known_scores, known_support)
    neg_features = np.concatenate(negative_parts) if negative_parts else np.zeros((0, known_features.shape[1]))
    features = np.concatenate([known_features, neg_features])
    right = np.concatenate([known_right, np.zeros(len(neg_features), dtype=bool)]).astype(float)
    if 0 < right.sum() < len(right):
        calibration["confidence"] = fit_confidence(features, right)
        if retrieval:  # enrolled landmarks have no classifier output: scored on the first two features alone
            calibration["confidence_enrolled"] = fit_confidence(features[:, :2], right)
    n_everyday = calibration.get("negatives", 0)
    calibration["samples"] = {  # what the calibration saw, for plots (python -m src calibrate shows the figures)
        "known": np.round(np.c_[known_features, known_right], 4).tolist(),
        "everyday": np.round(neg_features[:n_everyday], 4).tolist(),
        "unknown_landmarks": np.round(neg_features[n_everyday:], 4).tolist()}
    if negatives is not None and "confidence" in calibration:
        conf_known = confidence(known_features, calibration["confidence"])
        conf_neg = confidence(neg_features, calibration["confidence"])
        threshold = choose_threshold(conf_neg, max_false_rate)
        if retrieval:  # shifted so that the one threshold gives enrolled landmarks the same calibrated false rate
            enrolled = calibration["confidence_enrolled"]
            own = choose_threshold(confidence(neg_features[:, :2], enrolled), max_false_rate)
            calibration["confidence_enrolled"] = shift_to_threshold(enrolled, own, threshold)
        calibration.update(threshold=threshold, measured_on_calibration={
            "known_tagged_right": float(np.mean((conf_known >= threshold) & known_right)),
            "negatives_given_landmark": float(np.mean(conf_neg[:n_everyday] >= threshold)),
            "unknown_landmarks_given_landmark": float(np.mean(conf_neg[n_everyday:] >= threshold)),
            "auroc": auroc(conf_known[known_right], conf_neg)})
    else:
        log.warning("no photos without landmarks to calibrate on (give --negatives DIR or set $%s): the default "
                    "threshold is the uncalibrated fallback %.2f", NEGATIVES_ENV_VAR, FALLBACK_MIN_PROB)
        calibration.update(threshold=FALLBACK_MIN_PROB, threshold_source="fallback (no negatives)")
    index.calibration = calibration
    return index


def calibrate_model(model_path: str | os.PathLike, data_dir, negatives=None, valid_size: float = 0.2,
                    seed: int = 42, max_false_rate: float = DEFAULT_MAX_FALSE_RATE, backend=None,
                    progress: bool = True) -> tuple[Path, LandmarkIndex]:
    """Build and save ``model_path``'s index (``model.index.npz``); returns ``(path, index)``."""
    runner = backend if backend is not None else load_backend(model_path)
    index = build_index(runner, data_dir, negatives, valid_size, seed, max_false_rate, progress)
    path = index.save(index_path_for(model_path))
    return path, index


def describe_calibration(path: Path, index: LandmarkIndex) -> str:
    cal = index.calibration
    text = (f"Wrote {path}: {cal['method']}, {len(index)} reference photos of {len(index.classes)} landmarks; "
            f"default threshold {cal['threshold']:.3f}")
    measured = cal.get("measured_on_calibration")
    if measured:
        text += (f" (on the calibration photos: {measured['negatives_given_landmark']:.1%} of {cal['negatives']} "
                 f"without landmarks and {measured['unknown_landmarks_given_landmark']:.1%} of {cal['known']} "
                 f"landmarks left out of the index given one; {measured['known_tagged_right']:.1%} of the "
                 f"{cal['known_source']} tagged right)")
    else:
        text += " (uncalibrated fallback: no photos without landmarks were given)"
    return text


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--negatives", default=None, metavar="DIR",
                        help="photos that show no landmark, for the 'no known landmark' threshold (its fixed "
                             "calibration half is used; default: $LANDMARK_NEGATIVES, else ../shared/data/everyday "
                             "when present; 'none': no calibration, the fallback threshold)")
    parser.add_argument("--max-false-rate", type=float, default=DEFAULT_MAX_FALSE_RATE,
                        help=f"target: at most this share of photos without a landmark get one (default "
                             f"{DEFAULT_MAX_FALSE_RATE})")
    parser.add_argument("--valid-size", type=float, default=None,
                        help="validation share the model was trained with (default: from the checkpoint, else 0.2)")
    parser.add_argument("--seed", type=int, default=None, help="split seed the model was trained with (default 42)")


def negatives_from_args(value: str | None) -> Path | None:
    if value is None:
        return default_negatives_dir()
    return None if value.lower() == "none" else Path(value)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported model (checkpoints/*_exported.pt)")
    parser.add_argument("--data-dir", default=None,
                        help="the data set it was trained on (default: $LANDMARK_DATA, else data/landmark_images)")
    add_calibration_arguments(parser)


def calibrate_main(args: argparse.Namespace) -> int:
    valid_size = 0.2 if args.valid_size is None else args.valid_size
    seed = 42 if args.seed is None else args.seed
    path, index = calibrate_model(args.model, args.data_dir, negatives_from_args(args.negatives), valid_size, seed,
                                  args.max_false_rate)
    print(describe_calibration(path, index))
    return 0
