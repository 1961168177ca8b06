"""Build a model's landmark index and calibrate its default threshold: ``python -m src calibrate`` (``export``
does it too when it knows the data set).

On held-out photos only: the validation photos of the known landmarks (the ones the model did not train on;
each searched with its own reference left out), the same photos with their own landmark left out of the index
(landmarks the index does not know), and photos that show no landmark from one or more folders, each split into
*sources* (a folder, or one per ``repo`` of its ``sources.csv``; of each folder only the calibration half,
:func:`src.openset.split_negatives`, the other half is kept for measuring). The threshold is the least one at
which at most ``--max-false-rate`` of all those photos get a landmark; the false rate it keeps on photos from
elsewhere is measured by leaving each source out of the fit in turn (:func:`src.openset.leave_one_source_out`),
and the worst source left out is stated as the calibration's ``promise``.

Without ``--negatives``: ``$LANDMARK_NEGATIVES``, else ``../shared/data/everyday`` and ``everyday2`` beside the
project when present, else the small set shipped in ``src/calibration_photos`` (see its README).
"""
from __future__ import annotations

import argparse
import csv
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
    POOLED,
    auroc,
    confidence,
    fit_confidence,
    fit_open_set,
    leave_one_source_out,
    open_set_threshold,
    shift_to_threshold,
    split_negatives,
    top_features,
    without_class,
)
from .pipeline import iter_predictions
from .recognizer import class_info, fingerprint

log = logging.getLogger(__name__)

NEGATIVES_ENV_VAR = "LANDMARK_NEGATIVES"
# Photos without a landmark that may be redistributed, shipped so that a clone without ../shared calibrates too
SHIPPED_NEGATIVES = Path(__file__).resolve().parent / "calibration_photos"
HELD_OUT_SOURCE = "landmarks held out of the index"
SHARED_NEGATIVES = ("everyday", "everyday2")  # ../shared/data/NAME beside the project, when present


def default_negatives_dir() -> list[Path] | None:
    """Folders of photos without landmarks to calibrate on: ``$LANDMARK_NEGATIVES`` (folders separated by
    ``os.pathsep``; ``none``: none), else ``../shared/data/everyday`` and ``everyday2`` beside the project when
    present, else the shipped :data:`SHIPPED_NEGATIVES`."""
    override = os.environ.get(NEGATIVES_ENV_VAR)
    if override:
        if override.lower() == "none":
            return None
        return [Path(p).expanduser() for p in override.split(os.pathsep) if p]
    shared = [PROJECT_ROOT.parent / "shared" / "data" / name for name in SHARED_NEGATIVES]
    shared = [p for p in shared if p.is_dir()]
    return shared or ([SHIPPED_NEGATIVES] if SHIPPED_NEGATIVES.is_dir() else None)


def source_names(folder: Path) -> dict[str, str]:
    """``{file relative to folder: source name}`` from ``folder/sources.csv``'s ``file`` and ``repo`` columns."""
    table = folder / "sources.csv"
    if not table.is_file():
        return {}
    with open(table, newline="", encoding="utf-8") as fh:
        return {row["file"]: row["repo"].rstrip("/").split("/")[-1] for row in csv.DictReader(fh)
                if row.get("file") and row.get("repo")}


def negative_sources(folders) -> dict[str, list[Path]]:
    """``{source name: photos}`` to calibrate on: each folder is one source named after it, or one per ``repo``
    of its ``sources.csv`` (``everyday2/COCO128``); of each folder its calibration half (the shipped set whole)."""
    sources: dict[str, list[Path]] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder of photos without landmarks")
        halves = split_negatives(folder)
        shipped = folder.resolve() == SHIPPED_NEGATIVES
        repos = source_names(folder)
        for path in sorted(halves["calibrate"] + halves["measure"]) if shipped else halves["calibrate"]:
            repo = repos.get(path.relative_to(folder).as_posix())
            sources.setdefault(f"{folder.name}/{repo}" if repo else folder.name, []).append(path)
    return sources


def _as_folders(negatives) -> list[Path]:
    if negatives is None:
        return []
    if isinstance(negatives, (str, os.PathLike)):
        return [Path(negatives)]
    return [Path(p) for p in negatives]


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
                progress: bool = True, rule: str = POOLED) -> LandmarkIndex:
    """The index of a model's own landmarks (all training photos of ``data_dir`` as references; none for a
    model without embeddings) with its calibration; see the module docstring. ``negatives``: a folder or a list
    of folders of photos without landmarks; ``rule``: how the threshold counts them
    (:func:`src.openset.open_set_threshold`)."""
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
    # Known photos the model did not train on: the validation split. After a refit on every photo there are none:
    # its training photos are all answered right with near-certainty, a confidence fitted on them separates them
    # from any negative perfectly and puts the threshold near 0 (every photo would get a landmark), so such a
    # model gets the uncalibrated fallback below, and says so.
    held_out_known = bool(is_valid.any())
    known = is_valid if held_out_known else np.ones(len(samples), dtype=bool)
    known_source = "validation photos" if held_out_known else "training photos (no validation split)"
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
    sources = {HELD_OUT_SOURCE: top_features(held_out, held_support)} if len(ids) and len(model_classes) > 1 else {}
    folders = _as_folders(negatives)
    everyday_names: list[str] = []
    if folders and held_out_known:  # after a refit on every photo the fallback applies: negatives decide nothing
        by_source = negative_sources(folders)
        neg_paths = [p for paths in by_source.values() for p in paths]
        if not neg_paths:
            raise ValueError(f"{', '.join(map(str, folders))}: no photos to calibrate 'no known landmark' on")
        neg_probs, neg_embeddings, neg_ok = run_model(backend, neg_paths, "Photos without landmarks", progress)
        neg_scores = index.class_scores(neg_embeddings, neighbours=len(index)) if retrieval \
            else neg_probs.astype(np.float64)
        neg_features = top_features(neg_scores, neg_probs.astype(np.float64) if retrieval else None)
        owner = np.repeat(np.arange(len(by_source)), [len(v) for v in by_source.values()])[neg_ok]
        for number, name in enumerate(by_source):
            if (owner == number).any():
                sources[name] = neg_features[owner == number]
                everyday_names.append(name)
        calibration.update(negatives=int(len(neg_features)), negatives_dir=os.pathsep.join(map(str, folders)),
                           unknown_landmarks=int(len(ids)))
    known_features = top_features(known_scores, known_support)
    width = known_features.shape[1]
    everyday = np.concatenate([sources[n] for n in everyday_names]) if everyday_names else np.zeros((0, width))
    unknown = sources.get(HELD_OUT_SOURCE, np.zeros((0, width)))
    calibration["samples"] = {  # what the calibration saw, for plots (python -m src calibrate shows the figures)
        "known": np.round(np.c_[known_features, known_right], 4).tolist(),
        "everyday": np.round(everyday, 4).tolist(), "unknown_landmarks": np.round(unknown, 4).tolist()}
    calibration["sources"] = {name: int(len(f)) for name, f in sorted(sources.items())}
    neg_all = np.concatenate([everyday, unknown])
    fittable = 0 < known_right.sum() and len(neg_all) and held_out_known
    if folders and fittable:
        model, threshold = fit_open_set(known_features, known_right, sources, max_false_rate, rule)
        calibration["confidence"] = model
        if retrieval:  # enrolled landmarks have no classifier output: scored on the first two features alone,
            # shifted so that the one threshold gives them the same calibrated false rate on every source
            enrolled = fit_confidence(np.concatenate([known_features, neg_all])[:, :2],
                                      np.r_[known_right, np.zeros(len(neg_all))].astype(float))
            own = open_set_threshold({n: confidence(f[:, :2], enrolled) for n, f in sources.items()},
                                     max_false_rate, rule)
            calibration["confidence_enrolled"] = shift_to_threshold(enrolled, own, threshold)
        # the promise: the false rate on photos from a source the fit never saw, each source left out in turn
        held = leave_one_source_out(known_features, known_right, sources, max_false_rate, rule)
        conf_known = confidence(known_features, model)
        per_source = {n: float(np.mean(confidence(f, model) >= threshold)) for n, f in sorted(sources.items())}
        promise = max(held.values()) if held else max(per_source.values())
        n_everyday = sum(calibration["sources"][n] for n in everyday_names)
        text = (f"calibrated on {n_everyday} photos without a known landmark from {len(everyday_names)} source"
                f"{'s' if len(everyday_names) != 1 else ''}")
        if len(unknown):
            text += f" + {len(unknown)} photos of landmarks held out of the index"
        text += (f"; at most {promise:.1%} given a landmark on a held-out source" if held else
                 f"; {promise:.1%} given a landmark on its own photos (one source: none held out)")
        calibration.update(threshold=threshold, threshold_source=text, held_out_false_rate=held, rule=rule,
                           promise=float(promise), promise_measured=bool(held), measured_on_calibration={
                               "known_tagged_right": float(np.mean((conf_known >= threshold) & known_right)),
                               "negatives_given_landmark": float(np.mean(confidence(everyday, model) >= threshold))
                               if len(everyday) else None,
                               "unknown_landmarks_given_landmark": per_source.get(HELD_OUT_SOURCE),
                               "per_source": per_source,
                               "auroc": auroc(conf_known[known_right], confidence(neg_all, model))})
    else:
        if fittable:  # the confidence still ranks answers; only the threshold is not calibrated
            calibration["confidence"] = fit_confidence(np.concatenate([known_features, neg_all]),
                                                       np.r_[known_right, np.zeros(len(neg_all))].astype(float))
            if retrieval:
                calibration["confidence_enrolled"] = fit_confidence(
                    np.concatenate([known_features, neg_all])[:, :2],
                    np.r_[known_right, np.zeros(len(neg_all))].astype(float))
        if not held_out_known:
            log.warning("%s: the model trained on every photo of it (--valid-size 0), so no photo of a known "
                        "landmark is left to calibrate on: the default threshold is the uncalibrated fallback %.2f "
                        "(calibrate with photos it did not train on: python -m src calibrate --model M --data-dir "
                        "HELD_OUT)", data.root, FALLBACK_MIN_PROB)
            reason = "the model trained on every photo: none held out to calibrate on"
        else:
            log.warning("no photos without landmarks to calibrate on (give --negatives DIR or set $%s): the "
                        "default threshold is the uncalibrated fallback %.2f", NEGATIVES_ENV_VAR, FALLBACK_MIN_PROB)
            reason = "no photos without landmarks"
        calibration.update(threshold=FALLBACK_MIN_PROB, threshold_source=f"uncalibrated fallback ({reason})",
                           held_out_false_rate={}, promise=None, promise_measured=False)
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
    """What was written and which photos calibrated the threshold, with the false rate per held-out source."""
    cal = index.calibration
    text = (f"Wrote {path}: {cal['method']}, {len(index)} reference photos of {len(index.classes)} landmarks; "
            f"default threshold {cal['threshold']:.3f}, {cal.get('threshold_source', '')}")
    measured = cal.get("measured_on_calibration")
    if measured:
        text += f" ({measured['known_tagged_right']:.1%} of the {cal['known_source']} tagged right)"
        where = cal.get("negatives_dir", "")
        text += f"\nPhotos without a known landmark: {where}" if where else ""
        held = cal.get("held_out_false_rate") or {}
        for name, count in cal.get("sources", {}).items():
            own = measured.get("per_source", {}).get(name)
            text += (f"\n  {name}: {count} photos, given a landmark {own:.1%} when fitted with them"
                     + (f", {held[name]:.1%} when left out of the fit" if name in held else ""))
    return text


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--negatives", default=None, metavar="DIR", action="append",
                        help="a folder of photos that show no landmark, for the 'no known landmark' threshold "
                             "(repeat for several; each is one source, or one per 'repo' of its sources.csv; its "
                             "fixed calibration half is used; default: $LANDMARK_NEGATIVES, else "
                             "../shared/data/everyday and everyday2 when present, else the photos shipped in "
                             "src/calibration_photos; 'none': no calibration, the fallback threshold)")
    parser.add_argument("--max-false-rate", type=float, default=DEFAULT_MAX_FALSE_RATE,
                        help=f"target: at most this share of photos without a landmark get one (default "
                             f"{DEFAULT_MAX_FALSE_RATE})")
    parser.add_argument("--valid-size", type=float, default=None,
                        help="validation share the model was trained with (default: from the checkpoint, else 0.2)")
    parser.add_argument("--seed", type=int, default=None, help="split seed the model was trained with (default 42)")


def negatives_from_args(value) -> list[Path] | None:
    """``--negatives`` (None, a folder, or the list of folders given) -> folders to calibrate on, or None."""
    if value is None:
        return default_negatives_dir()
    values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    if any(str(v).lower() == "none" for v in values):
        return None
    return [Path(v) for v in values]


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
