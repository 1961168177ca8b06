"""Where the model fails: the notebook's and the app page's reflection (accuracy on the test photos, the most
confused pairs, the most confident mistakes). Scored by :mod:`src.evaluation`, like ``python -m src evaluate``.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from .app import ModelLoadError, find_exported_model, load_model, no_model_message, percent
from .recognizer import as_recognizer
from .data import DataNotFoundError, list_classes, resolve_data_dir, scan_split
from .evaluation import match_class, score_photos
from .helpers import is_quick_mode
from .images import open_image

# --------------------------------------------------------------------------------------------------------------
# Where the model fails (the notebook's reflection)
# --------------------------------------------------------------------------------------------------------------

def find_failures(model, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                  split: str = "test") -> dict:
    """Run the model over a split and collect its mistakes (top-1 answers, whatever their confidence).

    Scored by :func:`src.evaluation.score_photos` with its class-matching rule. Returns ``{"n", "correct",
    "failures": [(path, true, predicted, confidence)], "skipped", "confused": [((true, predicted), count)]}``;
    failures sorted by confidence, most confident first.
    """
    recognizer = as_recognizer(model)
    keys = [c["class"] for c in recognizer.classes()]
    root = resolve_data_dir(data_dir, download=False)
    folders = list_classes(root / split)
    samples = [(path, folders[label]) for path, label in scan_split(root / split, folders)
               if match_class(folders[label], keys) is not None]
    if limit is not None and limit > 0 and len(samples) > limit:
        step = len(samples) / limit  # evenly spread over classes (samples are ordered by class)
        samples = [samples[int(i * step)] for i in range(limit)]
    scored = score_photos(recognizer, samples, desc=f"Checking {split} photos")
    names = [c["name"] for c in recognizer.classes()]
    failures, correct = [], 0
    for record, truth, ranked in zip(scored["records"], scored["truth"], scored["ranked"]):
        if ranked[0] == truth:
            correct += 1
        else:
            failures.append((Path(record["path"]), names[truth], names[ranked[0]], float(record["top_k"][0]["prob"])))
    failures.sort(key=lambda f: -f[3])
    confused = Counter((t, p) for _, t, p, _ in failures).most_common(5)
    return {"n": correct + len(failures), "correct": correct, "failures": failures, "skipped": scored["errors"],
            "confused": confused}


def plot_failures(failures: Sequence[tuple], n: int = 6, cols: int = 3):
    """A grid of misclassified photos titled with the true and predicted landmark; returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    shown = list(failures)[:n]
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, true, predicted, prob) in zip(axes.flat, shown):
        img = open_image(path)
        img.thumbnail((400, 400))
        ax.imshow(img)
        ax.set_title(f"true: {true}\npredicted: {predicted} ({percent(prob)})", fontsize=9, color="#b00020")
    fig.tight_layout()
    return fig


def show_failures(model_path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                  n: int = 6, limit: int | None = None):
    """The notebook's reflection: accuracy, the most confused pairs and a plot of confident mistakes.

    Prints what is missing (model or data) instead of failing. In quick mode (``LANDMARK_QUICK=1``) only a few
    photos are checked. Returns the :func:`find_failures` result, or None when it could not run.
    """

    path = Path(model_path) if model_path is not None else find_exported_model()
    if path is None:
        print(no_model_message())
        return None
    try:
        model = load_model(path)
    except ModelLoadError as exc:
        print(exc)
        return None
    if limit is None and is_quick_mode():
        limit = 24
    try:
        report = find_failures(model, data_dir, limit=limit)
    except DataNotFoundError as exc:
        print(f"No test photos to check the model on: {exc}")
        return None
    if report["n"] == 0:
        print("None of the test photos belong to the model's landmarks; nothing to check.")
        return report
    print(f"Model {path.name}: {report['correct']} of {report['n']} test photos right "
          f"({100 * report['correct'] / report['n']:.1f}%), {len(report['failures'])} wrong.")
    if report["skipped"]:
        print(f"{len(report['skipped'])} unreadable test files skipped, e.g. {report['skipped'][0]}")
    if report["confused"]:
        print("Most frequent confusions (true -> predicted):")
        for (true, predicted), count in report["confused"]:
            print(f"  {count:3d} x  {true} -> {predicted}")
    if report["failures"]:
        import matplotlib.pyplot as plt  # noqa: PLC0415

        fig = plot_failures(report["failures"], n=n)
        fig.suptitle("The model's most confident mistakes", y=1.02)
        plt.show()
    return report


def in_voila() -> bool:
    """True inside a kernel that Voila started (it sets SERVER_SOFTWARE=voila/<version>)."""
    return os.environ.get("SERVER_SOFTWARE", "").startswith("voila")


def failures_section(**kwargs):
    """In a notebook, run :func:`show_failures` now; in the Voila web page, offer a button (keeps page load fast)."""
    if not in_voila():
        return show_failures(**kwargs)
    import ipywidgets as widgets  # noqa: PLC0415
    from IPython.display import display  # noqa: PLC0415

    button = widgets.Button(description="Show where the model fails", icon="search",
                            layout=widgets.Layout(width="260px"))
    out = widgets.Output()

    def _run(_):
        button.disabled = True
        with out:
            try:
                show_failures(**kwargs)
            except Exception as exc:  # never a traceback on the page
                print(f"Could not check the model: {' '.join(str(exc).split())}")

    button.on_click(_run)
    display(widgets.VBox([button, out]))
    return None
