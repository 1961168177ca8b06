"""Scoring an exported model on labelled photos: one scorer, one class-matching rule, for ``python -m src
evaluate``, the notebooks (``predictor_test``, confusion matrix) and the app's "where the model fails".

Every photo is decided by :class:`src.recognizer.Recognizer`, as ``predict``/``tag``/the app/the service decide
it. Labels are matched to the model's classes by :func:`match_class`: the exact folder name, else the landmark's
name without its number (a model of the 50-landmark set can be checked on a subset with other numbers).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from .data import class_display_name, resolve_data_dir, scan_split
from .helpers import atomic_write_json
from .landmarks import bare_name, display_name
from .openset import confidence, open_set_summary, split_negatives
from .pipeline import DEFAULT_BATCH_SIZE, iter_predictions
from .predict import add_model_arguments, load_recognizer
from .recognizer import as_recognizer


def match_class(label: str, classes: Sequence[str]) -> int | None:
    """The index in ``classes`` of the data set's class folder ``label``: exact name, else the same landmark
    name without its number; None when the model does not know it."""
    if label in classes:
        return list(classes).index(label)
    wanted = bare_name(label)
    for i, name in enumerate(classes):
        if bare_name(name) == wanted:
            return i
    return None


def score_photos(model, samples: Sequence[tuple[str | os.PathLike, str | None]], k: int = 5,
                 min_prob: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                 progress: bool = True, desc: str = "Evaluating") -> dict:
    """Decide every photo of ``samples`` = ``[(path, class folder name or None for "shows no known
    landmark")]``.

    Returns ``{"classes": [class keys], "records": [record], "truth": [class index, -1 (no known landmark) or
    None (a landmark the model does not know: also "no known landmark" is right)], "ranked": [[class index,
    ...] best first], "errors": [one-line reasons]}``; unreadable photos are left out of records (their reasons
    in errors).
    """
    recognizer = as_recognizer(model)
    keys = [c["class"] for c in recognizer.classes()]
    records, truth, ranked, errors = [], [], [], []
    labels = [label for _, label in samples]
    results = iter_predictions(recognizer.backend, [p for p, _ in samples], batch_size, workers, progress=progress,
                               desc=desc)
    number = {key: i for i, key in enumerate(keys)}
    for label, result in zip(labels, results):
        if result.probs is None:
            errors.append(result.error)
            continue
        emb = None if result.embedding is None else result.embedding.unsqueeze(0)
        record = recognizer.decide(result.probs.unsqueeze(0), emb, [str(result.path)], len(keys), min_prob)[0]
        records.append(record)
        truth.append(-1 if label is None else match_class(label, keys))
        ranked.append([number[e["class"]] for e in record["top_k"]])
    return {"classes": keys, "records": records, "truth": truth, "ranked": ranked, "errors": errors,
            "threshold": recognizer.min_prob if min_prob is None else float(min_prob), "method": recognizer.method}


def evaluate_exported(model, samples: Sequence[tuple[str | os.PathLike, str | None]], k: int = 5,
                      batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, progress: bool = True,
                      min_prob: float | None = None) -> dict:
    """Top-1 / top-``k`` accuracy on the photos of known landmarks, and the open-set outcome at the threshold.

    ``samples``: ``[(photo, class folder name)]``, or ``None`` as the name for a photo that shows no landmark.
    A labelled class the model does not know raises ``ValueError``. Returns ``{"accuracy", "topk_accuracy", "k",
    "count", "errors", "per_class": {folder: accuracy}, "open_set": {...}}`` (see
    :func:`src.openset.open_set_summary`).
    """
    recognizer = as_recognizer(model)
    keys = [c["class"] for c in recognizer.classes()]
    unknown = sorted({label for _, label in samples if label is not None and match_class(label, keys) is None})
    if unknown:
        raise ValueError(f"the model does not know the classes {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''} (it has {len(keys)} classes)")
    scored = score_photos(recognizer, samples, k, min_prob, batch_size, workers, progress)
    k = max(1, min(int(k), len(keys)))
    per_class: dict[str, list[int]] = {}
    correct = correct_k = 0
    for t, ranked in zip(scored["truth"], scored["ranked"]):
        if t is None or t < 0:
            continue
        hit = ranked[0] == t
        correct += hit
        correct_k += t in ranked[:k]
        per_class.setdefault(keys[t], [0, 0])
        per_class[keys[t]][0] += hit
        per_class[keys[t]][1] += 1
    count = sum(n for _, n in per_class.values())
    predicted = [keys[r[0]] for r in scored["ranked"]]
    truth = [keys[t] if t is not None and t >= 0 else None for t in scored["truth"]]
    confidences = [r["prob"] for r in scored["records"]]
    return {"accuracy": correct / count if count else 0.0, "topk_accuracy": correct_k / count if count else 0.0,
            "k": k, "count": count, "errors": scored["errors"], "method": scored["method"],
            "per_class": {name: hits / n for name, (hits, n) in sorted(per_class.items())},
            "open_set": open_set_summary(predicted, confidences, truth, scored["threshold"])}


def predictor_test(test_dataloader, model_reloaded, batch_size: int = 32, workers: int | None = None):
    """Run an exported model over the test photos; returns ``(truth, predictions)`` as int arrays of class
    numbers in the model's classes (top-1 answers, whatever their confidence), for a confusion matrix.

    Like the course's version it reads the photo files behind ``test_dataloader`` (its dataset's ``samples``),
    because the exported module does its own preprocessing. ``test_dataloader`` may also be a list of
    ``(path, label)``; labels are matched to the model's classes by :func:`match_class`.
    """
    dataset = getattr(test_dataloader, "dataset", test_dataloader)
    samples = list(getattr(dataset, "samples", dataset))
    recognizer = as_recognizer(model_reloaded)
    keys = [c["class"] for c in recognizer.classes()]
    data_classes = list(getattr(dataset, "class_names", []) or []) or keys
    named = [(p, data_classes[label]) for p, label in samples]
    missing = sorted({name for _, name in named if match_class(name, keys) is None})
    if missing:
        raise ValueError(f"test classes {missing} are not among the model's {len(keys)} classes")
    scored = score_photos(recognizer, named, batch_size=batch_size, workers=workers, desc="Testing exported model")
    for error in scored["errors"]:
        print(f"Skipping {error}", file=sys.stderr)
    truth_a = np.array(scored["truth"], dtype=np.int64)
    preds_a = np.array([r[0] for r in scored["ranked"]], dtype=np.int64)
    if len(truth_a):
        print(f"Test accuracy: {100.0 * (truth_a == preds_a).mean():.1f}% ({int((truth_a == preds_a).sum())}/"
              f"{len(truth_a)})")
    return truth_a, preds_a


def confusion_matrix(truth, preds, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of photos of class ``i`` predicted as ``j``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(truth, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def per_class_accuracy(truth, preds, class_names: Sequence[str]) -> dict[str, float | None]:
    """``{class folder name: accuracy}`` (``None`` for a class with no test photos)."""
    cm = confusion_matrix(truth, preds, len(class_names))
    totals = cm.sum(axis=1)
    return {name: (float(cm[i, i] / totals[i]) if totals[i] else None) for i, name in enumerate(class_names)}


def plot_confusion_matrix(truth, preds, class_names: Sequence[str], normalize: bool = True):
    """Confusion matrix heat map (rows: truth, normalised per row by default); returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting only when a plot is asked for

    n = len(class_names)
    cm = confusion_matrix(truth, preds, n).astype(np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    labels = [class_display_name(c) for c in class_names]
    side = max(5.0, 0.28 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_yticks(range(n), labels, fontsize=7 if n > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = float((np.asarray(truth) == np.asarray(preds)).mean()) if len(truth) else float("nan")
    ax.set_title(f"Confusion matrix ({len(truth)} test photos, accuracy {acc:.1%})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_per_class_accuracy(truth, preds, class_names: Sequence[str]):
    """Horizontal bar chart of per-class accuracy, worst first; returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting only when a plot is asked for

    acc = per_class_accuracy(truth, preds, class_names)
    items = sorted(((v if v is not None else -1.0), class_display_name(k)) for k, v in acc.items())
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(items) + 1)))
    ax.barh([name for _, name in items], [max(v, 0.0) for v, _ in items], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy on the test photos")
    ax.tick_params(axis="y", labelsize=7 if len(items) > 20 else 9)
    fig.tight_layout()
    return fig


def plot_open_set(recognizer):
    """Two plots of what the threshold was calibrated on (the model's index): how similar photos are to their
    nearest landmark - known landmarks, everyday photos, landmarks the index does not know - and the trade-off
    between landmark photos tagged right and photos without a known landmark given one, with the default
    threshold marked. Returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting only when a plot is asked for

    cal = recognizer.calibration
    samples = cal.get("samples")
    if not samples or "confidence" not in cal:
        raise ValueError("this model has no calibration to plot (python -m src calibrate)")
    n = len(cal["confidence"]["weights"])  # features per photo (the first is the similarity or probability)
    known = np.asarray(samples["known"], dtype=np.float64).reshape(-1, n + 1)
    everyday = np.asarray(samples["everyday"], dtype=np.float64).reshape(-1, n)
    unknown = np.asarray(samples["unknown_landmarks"], dtype=np.float64).reshape(-1, n)
    right = known[:, n] > 0.5
    fig, (left, right_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    what = "similarity to the nearest landmark" if recognizer.method == "retrieval" else "top probability"
    bins = np.linspace(min(known[:, 0].min(), everyday[:, 0].min() if len(everyday) else 1,
                           unknown[:, 0].min() if len(unknown) else 1), 1.0, 40)
    for values, label, colour in ((known[right, 0], "known landmark, right answer", "tab:green"),
                                  (known[~right, 0], "known landmark, wrong answer", "tab:orange"),
                                  (everyday[:, 0], "everyday photo", "tab:gray"),
                                  (unknown[:, 0], "landmark not in the index", "tab:red")):
        if len(values):
            left.hist(values, bins=bins, alpha=0.55, label=f"{label} ({len(values)})", color=colour, density=True)
    left.set_xlabel(what)
    left.set_ylabel("share of photos (density)")
    left.set_title("How similar each photo is to its best landmark")
    left.legend(fontsize=8)
    conf_known = confidence(known[:, :n], cal["confidence"])
    conf_neg = confidence(np.concatenate([everyday, unknown]), cal["confidence"])
    grid = np.unique(np.concatenate([conf_known, conf_neg, [0.0, 1.0]]))
    tagged = [np.mean((conf_known >= t) & right) for t in grid]
    given = [np.mean(conf_neg >= t) for t in grid]
    right_ax.plot(given, tagged, color="tab:blue")
    t = recognizer.default_min_prob
    right_ax.scatter([np.mean(conf_neg >= t)], [np.mean((conf_known >= t) & right)], color="black", zorder=3,
                     label=f"default threshold {t:.2f} (target: at most {cal['max_false_rate']:.0%} given one)")
    right_ax.set_xlabel("photos without a known landmark given one (invented locations)")
    right_ax.set_ylabel("known-landmark photos tagged right")
    right_ax.set_xlim(-0.005, 0.3)
    right_ax.set_title("The trade-off the threshold makes")
    right_ax.grid(alpha=0.3)
    right_ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------
# python -m src evaluate
# --------------------------------------------------------------------------------------------------------------

def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, k=5)
    parser.add_argument("--data-dir", default=None,
                        help="data folder or zip (default: $LANDMARK_DATA, else data/landmark_images)")
    parser.add_argument("--split", default="test", choices=["test", "train"],
                        help="which folder of the data set to score (default: test)")
    parser.add_argument("--negatives", default=None, metavar="DIR",
                        help="also score photos that show no landmark: the MEASURING half of DIR (the other half "
                             "is for calibration), for the open-set figures (GAP, share given a landmark)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")


def evaluate_main(args: argparse.Namespace) -> int:
    recognizer = load_recognizer(args)
    split_dir = resolve_data_dir(args.data_dir) / args.split
    samples = [(p, p.parent.name) for p, _ in scan_split(split_dir)]
    if not samples:
        raise ValueError(f"{split_dir}: no photos")
    if args.negatives:
        samples += [(p, None) for p in split_negatives(args.negatives)["measure"]]
    result = evaluate_exported(recognizer, samples, k=args.k, batch_size=args.batch_size)
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    width = max((len(display_name(c)) for c in result["per_class"]), default=0)
    for name, accuracy in result["per_class"].items():
        print(f"  {display_name(name):<{width}}  {accuracy:6.1%}")
    o = result["open_set"]
    print(f"{args.split.capitalize()} accuracy of {args.model}: {result['accuracy']:.1%} "
          f"(top-{result['k']} {result['topk_accuracy']:.1%}) on {result['count']} photos in {split_dir}"
          + (f"; {len(result['errors'])} unreadable" if result["errors"] else ""))
    print(f"At the threshold {o['threshold']:.3f} ({result['method']}): {o['known_tagged_right']:.1%} tagged right, "
          f"{o['known_tagged_wrong']:.1%} tagged wrong, {o['known_no_landmark']:.1%} 'no known landmark'"
          + (f"; {o['unknown_given_landmark']:.1%} of {o['unknown']} photos without a known landmark given one; "
             f"GAP {o['gap']:.3f}" if o["unknown"] else ""))
    if args.json:
        atomic_write_json(args.json, {"model": str(args.model), "split_dir": str(split_dir), **result})
    return 0
