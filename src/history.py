"""A training run's history: the per-epoch rows as CSV and JSON files, and the loss and accuracy curves.

:func:`src.train.optimize` writes both after every epoch (atomically) and redraws the curves live in a notebook.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Mapping

from .helpers import atomic_path, atomic_write_json, atomic_write_text


def plot_history(history: list[dict], path: str | os.PathLike | None = None, fig=None):
    """Train/valid loss and accuracy per epoch; saved as PNG (atomically) when ``path`` is given."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting only when asked

    if fig is None:
        fig, _ = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss, ax_acc = fig.axes[:2]
    for ax in (ax_loss, ax_acc):
        ax.clear()
    epochs = [h["epoch"] for h in history]
    validated = [h for h in history if h.get("valid_loss") is not None]  # none with --valid-size 0
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    if validated:
        ax_loss.plot([h["epoch"] for h in validated], [h["valid_loss"] for h in validated], "o-", label="valid")
        ax_acc.plot([h["epoch"] for h in validated], [h["valid_acc"] for h in validated], "o-", label="valid")
    ax_loss.set(title="Loss", xlabel="epoch")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    if path is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    return fig


class LivePlot:
    """Redraws the history plot in the notebook cell after every epoch."""

    def __init__(self):
        import matplotlib.pyplot as plt  # noqa: PLC0415

        self.fig, _ = plt.subplots(1, 2, figsize=(11, 4))
        plt.close(self.fig)  # shown through display(), not by the inline backend at cell end
        self.handle = None

    def update(self, history: list[dict]) -> None:
        from IPython.display import display  # noqa: PLC0415

        plot_history(history, fig=self.fig)
        # A display handle redraws this one output in place; clear_output would also wipe the progress bars.
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)


def write_history(history: list[dict], files: Mapping[str, Path]) -> None:
    atomic_write_json(files["history_json"], history)
    columns = list(dict.fromkeys(k for row in history for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(files["history_csv"], out.getvalue())
