"""Open-set decisions: "which known landmark, and how sure", or "no known landmark".

Pure numpy, no model: the scores of :mod:`src.recognizer`, the calibration that turns them into a confidence,
the default threshold chosen on held-out photos for a stated target, the fixed calibrate/measure halves of a
folder of photos that show no landmark, and the metrics (AUROC, Global Average Precision) that measure it.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import is_candidate_image

# The target the default threshold is chosen for: at most this share of photos with no known landmark may get one.
DEFAULT_MAX_FALSE_RATE = 0.02
# Used only when nothing could be calibrated (no photos without landmarks at hand): stricter than any threshold
# measured on landmarks13 + everyday (docs/open_set.md), so it errs towards "no known landmark".
FALLBACK_MIN_PROB = 0.9


# --------------------------------------------------------------------------------------------------------------
# Held-out photos without a landmark: a fixed half to calibrate on, the other half to measure on
# --------------------------------------------------------------------------------------------------------------

def _rank(relative: str) -> str:
    return hashlib.sha1(relative.encode("utf-8")).hexdigest()


def split_negatives(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """``{"calibrate": [...], "measure": [...]}``: the photos under ``folder`` in two fixed halves.

    Each subfolder (a kind of photo: animals, food, ...) is halved on its own, by a hash of each file's path
    relative to ``folder``, so the halves are the same on every machine and run and have the same mix of kinds.
    Calibration only ever sees its half; measurements only the other.
    """
    folder = Path(folder)
    groups: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if is_candidate_image(name) and not name.startswith("."):
                rel = (Path(root) / name).relative_to(folder).as_posix()
                groups.setdefault(str(Path(rel).parent), []).append(rel)
    halves: dict[str, list[Path]] = {"calibrate": [], "measure": []}
    for _, items in sorted(groups.items()):
        items = sorted(items, key=_rank)
        cut = (len(items) + 1) // 2
        halves["calibrate"] += [folder / r for r in items[:cut]]
        halves["measure"] += [folder / r for r in items[cut:]]
    return {k: sorted(v) for k, v in halves.items()}


# --------------------------------------------------------------------------------------------------------------
# Scores -> confidence -> decision
# --------------------------------------------------------------------------------------------------------------

def score_features(scores: np.ndarray) -> np.ndarray:
    """``[N, C]`` per-class scores -> ``[N, C, 2]`` features of each class: its score, and its margin over the
    best other class (positive only for the top class). An unknown landmark tends to resemble several known ones
    a little; a known one resembles its own clearly more than any other."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[1] < 2:
        return np.stack([scores, scores], axis=-1)
    order = np.sort(scores, axis=1)
    best, second = order[:, -1:], order[:, -2:-1]
    best_other = np.where(scores >= best, second, best)
    return np.stack([scores, scores - best_other], axis=-1)


def top_features(scores: np.ndarray, support: np.ndarray | None = None) -> np.ndarray:
    """The features of each photo's top class, ``[N, 2]`` (see :func:`score_features`), and with ``support``
    (``[N, C]``, the classifier's probability of each class) a third column: the classifier's probability of
    that class. Photos of landmarks the model does not know are often near a known landmark's references while the
    classifier spreads its belief; on held-out photos this third feature tagged 4 points more of the known
    landmarks right at the same 2 % false rate (docs/open_set.md)."""
    top = np.asarray(scores).argmax(axis=1)
    feats = score_features(scores)[np.arange(len(top)), top]
    if support is None:
        return feats
    return np.c_[feats, np.asarray(support, dtype=np.float64)[np.arange(len(top)), top]]


def without_class(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Classifier probabilities with each photo's own class removed and the rest renormalised: what a classifier
    that never learnt that landmark would say, roughly (stands for photos of landmarks the model does not know)."""
    probs = np.array(probs, dtype=np.float64)
    probs[np.arange(len(probs)), labels] = 0.0
    return probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)


def shift_to_threshold(model: dict, own_threshold: float, target_threshold: float) -> dict:
    """``model`` with its bias moved so that a confidence of ``own_threshold`` becomes ``target_threshold``: two
    confidence models (the model's own landmarks, enrolled ones) then share one threshold, each at its calibrated
    false rate."""
    def logit(p: float) -> float:
        p = min(max(float(p), 1e-6), 1 - 1e-6)
        return float(np.log(p / (1 - p)))
    return dict(model, bias=float(model["bias"]) + logit(target_threshold) - logit(own_threshold))


def fit_confidence(features: np.ndarray, correct: np.ndarray, steps: int = 500, l2: float = 1e-3) -> dict:
    """Logistic regression ``P(the top answer is right | features)``, fitted by Newton's method.

    ``features`` ``[N, F]``: each photo's scores; ``correct`` ``[N]``: 1 where the top answer is the photo's
    landmark, 0 where it is wrong or the photo shows no known landmark. Features are standardised first. Returns
    ``{"mean", "scale", "weights", "bias"}`` (plain lists), what :func:`confidence` applies.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError("fit_confidence needs features [N, F] and N labels")
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (p - y) + l2 * np.r_[w[:-1], 0.0]
        hess = (z * (p * (1 - p))[:, None]).T @ z + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"mean": mean.tolist(), "scale": scale.tolist(), "weights": w[:-1].tolist(), "bias": float(w[-1])}


def confidence(features: np.ndarray, model: dict) -> np.ndarray:
    """The calibrated probability that each photo's top answer is right (see :func:`fit_confidence`)."""
    x = (np.asarray(features, dtype=np.float64) - np.asarray(model["mean"])) / np.asarray(model["scale"])
    logit = x @ np.asarray(model["weights"]) + float(model["bias"])
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))


def choose_threshold(negative_scores: Sequence[float], max_false_rate: float = DEFAULT_MAX_FALSE_RATE) -> float:
    """The lowest threshold at which at most ``max_false_rate`` of ``negative_scores`` (photos that must get no
    landmark) reach it: a photo gets a landmark when its score is ``>= threshold``.

    With N negatives, at most ``floor(max_false_rate * N)`` of them may pass; the threshold sits just above the
    next one, so ties never let one more through.
    """
    scores = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ValueError("choose_threshold needs at least one score of a photo without a known landmark")
    allowed = int(math.floor(max_false_rate * len(scores) + 1e-9))
    if allowed >= len(scores):
        return 0.0
    return float(np.nextafter(scores[allowed], np.inf))


def worst_source_threshold(scores_by_source: dict[str, np.ndarray], max_false_rate: float) -> float:
    """The lowest threshold at which EVERY source (a set of photos from one place: a photo collection, landmarks
    held out of the index) lets at most ``max_false_rate`` of its photos through: pooled, a large easy source
    would hide a small hard one (landscapes, ordinary buildings)."""
    return max(choose_threshold(scores, max_false_rate) for scores in scores_by_source.values() if len(scores))


POOLED, PER_SOURCE = "pooled", "per_source"


def open_set_threshold(scores_by_source: dict[str, np.ndarray], max_false_rate: float, rule: str = POOLED) -> float:
    """:data:`POOLED`: at most ``max_false_rate`` of all the photos together (each photo counts once);
    :data:`PER_SOURCE`: of every source (:func:`worst_source_threshold`: stricter; a source of fewer than
    1/``max_false_rate`` photos then lets none through)."""
    if rule == PER_SOURCE:
        return worst_source_threshold(scores_by_source, max_false_rate)
    if rule != POOLED:
        raise ValueError(f"unknown threshold rule {rule!r} (use {POOLED!r} or {PER_SOURCE!r})")
    return choose_threshold(np.concatenate([np.asarray(s, dtype=np.float64) for s in scores_by_source.values()]),
                            max_false_rate)


def fit_open_set(known: np.ndarray, right: np.ndarray, sources: dict[str, np.ndarray],
                 max_false_rate: float = DEFAULT_MAX_FALSE_RATE, rule: str = POOLED) -> tuple[dict, float]:
    """``(confidence model, threshold)`` fitted on known-landmark photos (``known`` features, ``right``: the top
    answer is their landmark) and photos without a known landmark, ``{source: features}``; the threshold by
    ``rule`` (:func:`open_set_threshold`). Sources are taken in name order: the same inputs give the same
    threshold."""
    names = sorted(n for n in sources if len(sources[n]))
    negatives = np.concatenate([np.asarray(sources[n], dtype=np.float64) for n in names])
    model = fit_confidence(np.concatenate([known, negatives]),
                           np.r_[np.asarray(right, dtype=np.float64), np.zeros(len(negatives))])
    return model, open_set_threshold({n: confidence(sources[n], model) for n in names}, max_false_rate, rule)


def leave_one_source_out(known: np.ndarray, right: np.ndarray, sources: dict[str, np.ndarray],
                         max_false_rate: float = DEFAULT_MAX_FALSE_RATE, rule: str = POOLED) -> dict[str, float]:
    """For each source: fit (:func:`fit_open_set`) on all the others, and measure the share of the left-out
    source's photos given a landmark: the false rate on photos from a place the calibration never saw.
    ``{}`` with fewer than two sources (nothing to leave out)."""
    names = sorted(n for n in sources if len(sources[n]))
    if len(names) < 2:
        return {}
    rates = {}
    for name in names:
        model, threshold = fit_open_set(known, right, {n: sources[n] for n in names if n != name}, max_false_rate,
                                        rule)
        rates[name] = float(np.mean(confidence(sources[name], model) >= threshold))
    return rates


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------

def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties: half)."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks of ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def global_average_precision(predicted: Sequence, confidences: Sequence[float], truth: Sequence) -> float:
    """Global Average Precision (the Google Landmark Recognition challenge's metric, "micro AP").

    One prediction per photo, ranked by confidence over all photos; ``truth`` is the photo's landmark or ``None``
    when it shows no known landmark (then any prediction is wrong). ``predicted`` ``None`` = no prediction made
    (counted as not retrieved). GAP = (1/M) * sum_i P(i) * rel(i), M = photos with a known landmark.
    """
    m = sum(t is not None for t in truth)
    if m == 0:
        return float("nan")
    made = [(c, p == t) for p, c, t in zip(predicted, confidences, truth) if p is not None]
    made.sort(key=lambda item: -item[0])
    hits, total = 0, 0.0
    for i, (_, right) in enumerate(made, 1):
        if right:
            hits += 1
            total += hits / i
    return total / m


def open_set_summary(predicted: Sequence, confidences: Sequence[float], truth: Sequence, threshold: float) -> dict:
    """At ``threshold``: shares of known-landmark photos tagged right / tagged wrong / said "no known landmark",
    the share of photos without a known landmark given one; GAP of the ranked top answers, and AUROC of
    confidence for photos with vs without a known landmark."""
    conf = np.asarray(confidences, dtype=np.float64)
    known = np.array([t is not None for t in truth])
    given = conf >= threshold
    right = np.array([p == t and t is not None for p, t in zip(predicted, truth)])
    n_known, n_unknown = int(known.sum()), int((~known).sum())
    kept = [p if g else None for p, g in zip(predicted, given)]
    return {
        "threshold": float(threshold),
        "known": n_known, "unknown": n_unknown,
        "known_tagged_right": float((given & right & known).sum() / max(n_known, 1)),
        "known_tagged_wrong": float((given & ~right & known).sum() / max(n_known, 1)),
        "known_no_landmark": float((~given & known).sum() / max(n_known, 1)),
        "unknown_given_landmark": float((given & ~known).sum() / max(n_unknown, 1)),
        "top1_known": float((right & known).sum() / max(n_known, 1)),
        # GAP as the challenge defines it: every photo's top answer, ranked by confidence (no threshold); and
        # with the "no known landmark" answers withdrawn, which can only lower it
        "gap": global_average_precision(list(predicted), conf, truth),
        "gap_withdrawn": global_average_precision(kept, conf, truth),
        "auroc_known_vs_unknown": auroc(conf[known], conf[~known]),
    }
