"""Shared benchmark helpers: a description of the machine, printing a table, saving the results, the shared
data sets' arguments, a parallel forward-pass rate."""
from __future__ import annotations

import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # ../shared/data beside the clone
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere


def machine() -> dict:
    """CPU model, cores, torch threads, GPU (if any) and versions: what a timing means depends on them."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Rows as a Markdown table; ``columns`` is ``[(key, header), ...]``."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def save_results(name: str, script: str, argv: list[str] | None, rows: list[dict], table: str, **facts) -> Path:
    """Print ``table`` and write ``results/NAME.json``: the command that reproduces it, the machine, ``facts``,
    the rows and the table."""
    from src.helpers import atomic_write_json  # noqa: PLC0415  (after the sys.path line above)

    print("\n" + table)
    out = {"command": f"python benchmarks/{script} " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
           "machine": machine(), **facts, "rows": rows, "table": table}
    path = RESULTS_DIR / f"{name}.json"
    atomic_write_json(path, out)
    print(f"\nwrote {path}")
    return path


def add_open_set_data_arguments(parser) -> None:
    """The exported model and the three data sets an open-set benchmark reads (``../shared/data``)."""
    parser.add_argument("--model", default="checkpoints/transfer_exported.pt")
    parser.add_argument("--data-dir", default=str(SHARED_DATA / "landmarks13"))
    parser.add_argument("--negatives", default=str(SHARED_DATA / "everyday"))
    parser.add_argument("--new", default=str(SHARED_DATA / "new_landmarks"))


def parallel_rate(runners, batches) -> float:
    """Photos/s of ``runners`` (``src.backends.parallel_runners``), each fed every batch by a thread of its own."""
    def work(runner):
        for batch in batches:
            runner(batch)
    threads = [threading.Thread(target=work, args=(r,)) for r in runners]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(runners) * sum(len(b) for b in batches) / (time.perf_counter() - start)
