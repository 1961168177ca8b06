"""The training notebooks run top to bottom, headless (kernel python3), in quick mode on generated photos; the
committed notebooks are the ones scripts/make_notebooks.py writes and carry no outputs of a quick or test run.

(app.ipynb is executed by tests/test_app.py; here it only gets the static checks.)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import make_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING_NOTEBOOKS = {"cnn_from_scratch.ipynb": "original_exported.pt",
                      "transfer_learning.ipynb": "transfer_exported.pt"}
ALL_NOTEBOOKS = [*TRAINING_NOTEBOOKS, "app.ipynb"]
# Traces a quick-mode or test-suite run leaves in outputs; committed outputs must come from a real run.
QUICK_RUN_MARKERS = ("QUICK MODE", "pytest-of-", "LANDMARK_QUICK")

nbformat = pytest.importorskip("nbformat")


def _output_text(output) -> str:
    text = output.get("text", "")
    data = output.get("data", {})
    parts = [text if isinstance(text, str) else "".join(text)]
    for key in ("text/plain", "text/html", "text/markdown"):
        value = data.get(key, "")
        parts.append(value if isinstance(value, str) else "".join(value))
    parts += [output.get("ename", ""), output.get("evalue", "")]
    return "\n".join(parts)


def _outputs(nb) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_committed_notebook_has_no_outputs_of_a_quick_or_failed_run(name):
    nb = nbformat.read(REPO_ROOT / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"], f"{name} was committed with an error output"
    for output in outputs:
        text = _output_text(output)
        found = [m for m in QUICK_RUN_MARKERS if m in text]
        assert not found, f"{name} carries outputs of a quick/test run ({found[0]!r}): clear them or rerun for real"


# What a full run prints (on any data set), per notebook: a committed notebook must show its results.
FULL_RUN_RESULTS = {"cnn_from_scratch.ipynb": ["Test accuracy", "exported"],
                    "transfer_learning.ipynb": ["Test accuracy", "default threshold", "exported"],
                    "app.ipynb": ["test photos right"]}


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_committed_notebook_shows_the_results_of_a_full_run(name):
    nb = nbformat.read(REPO_ROOT / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    with_output = sum(bool(c.get("outputs")) for c in code)
    assert with_output >= len(code) / 2, (f"{name}: only {with_output} of {len(code)} code cells have outputs; run "
                                          f"scripts/make_notebooks.py --execute")
    text = "\n".join(_output_text(o) for o in _outputs(nb))
    missing = [m for m in FULL_RUN_RESULTS[name] if m not in text]
    assert not missing, f"{name}: its outputs lack {missing}"
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb)) or name == "app.ipynb", f"{name}: no plots"


def _make_notebooks_module():
    spec = importlib.util.spec_from_file_location("make_notebooks", REPO_ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_committed_notebook_matches_its_generator(name):
    """Prose and code live in scripts/make_notebooks.py; the committed notebook has exactly its cells."""
    make = _make_notebooks_module()
    cells = {"cnn_from_scratch.ipynb": make.SCRATCH, "transfer_learning.ipynb": make.TRANSFER,
             "app.ipynb": make.APP}[name]
    expected = make.build(cells, "x")
    committed = nbformat.read(REPO_ROOT / name, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in expected.cells], \
        f"{name} differs from scripts/make_notebooks.py: edit the script and rerun it"


def _execute(name: str, tmp_path: Path, monkeypatch) -> tuple[object, Path]:
    nbclient = pytest.importorskip("nbclient")
    data = make_dataset(tmp_path / "landmark_images", n_classes=3, n_train=8, n_test=3)
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("LANDMARK_QUICK", "1")
    monkeypatch.setenv("LANDMARK_DATA", str(data))
    monkeypatch.setenv("LANDMARK_CHECKPOINTS", str(checkpoints))
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LANDMARK_DEVICE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny run; threads only fight the other work on a shared CPU
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(REPO_ROOT / name, as_version=4)  # committed outputs, if any, are replaced cell by cell
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    return nb, checkpoints


def _repo_checkpoints() -> set[str]:
    folder = REPO_ROOT / "checkpoints"
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


@pytest.mark.slow
def test_cnn_from_scratch_runs_headless_in_quick_mode(tmp_path, monkeypatch):
    before = _repo_checkpoints()
    nb, checkpoints = _execute("cnn_from_scratch.ipynb", tmp_path, monkeypatch)
    text = "\n".join(_output_text(o) for o in _outputs(nb))
    assert "QUICK MODE" in text  # the kernel saw the test's environment
    assert "3 landmarks" in text and "unreadable files left out: 0" in text
    assert "Test accuracy" in text  # one_epoch_test and predictor_test both ran
    assert "Is this picture of the" in text
    # a batch, histograms, live curves, confusion matrix, per-class accuracy, the photo: all drawn
    assert _images(nb) >= 6
    _check_export(checkpoints / "original_exported.pt")
    assert (checkpoints / "scratch" / "best.pt").is_file() and (checkpoints / "scratch" / "last.pt").is_file()
    assert _repo_checkpoints() == before, "the notebook wrote into the repository's checkpoints/"


@pytest.mark.slow
def test_transfer_learning_runs_headless_in_quick_mode(tmp_path, monkeypatch):
    before = _repo_checkpoints()
    nb, checkpoints = _execute("transfer_learning.ipynb", tmp_path, monkeypatch)
    text = "\n".join(_output_text(o) for o in _outputs(nb))
    assert "QUICK MODE" in text
    assert "efficientnet_lite0" in text and "resnet50" in text  # the comparison table
    assert "exporting transfer" in text
    assert _images(nb) >= 3  # two training histories and the confusion matrix
    for run in ("transfer", "transfer_finetuned"):
        assert (checkpoints / run / "best.pt").is_file()
        assert (checkpoints / run / "test_metrics.json").is_file()
    assert list((tmp_path / "cache").rglob("features/*.pt")), "the fast path cached its features"
    _check_export(checkpoints / "transfer_exported.pt")
    assert _repo_checkpoints() == before, "the notebook wrote into the repository's checkpoints/"


def _check_export(path: Path) -> None:
    import torch

    from src.predictor import load_exported

    exported = load_exported(path)
    assert list(exported.class_names) == ["00.Landmark_A", "01.Landmark_B", "02.Landmark_C"]
    with torch.no_grad():
        probs = exported(torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8))
    assert probs.shape == (2, 3)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)


# -- src/notebook.py, the notebooks' helpers -----------------------------------------------------------------------

def test_train_args_are_the_command_line_defaults_plus_overrides(tmp_path):
    import argparse

    from src.notebook import train_args
    from src.train_cli import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    cli = parser.parse_args(["--arch", "efficientnet_lite0", "--epochs", "3", "--unfreeze", "2",
                             "--out", str(tmp_path)])
    assert vars(train_args(arch="efficientnet_lite0", epochs=3, unfreeze=2, out=tmp_path)) == vars(cli)
    with pytest.raises(TypeError, match="epoch"):
        train_args(epoch=3)  # a typo must not silently train with the default


def test_benchmark_table_shows_the_measurement_or_how_to_make_it(tmp_path):
    import json

    from src.notebook import benchmark_table

    assert "python benchmarks/bench_x.py" in benchmark_table("bench_x", tmp_path)
    (tmp_path / "bench_x.json").write_text(json.dumps({
        "command": "python benchmarks/bench_x.py --epochs 2", "table": "| method | acc |\n|--|--|\n| ours | 9 |",
        "machine": {"cpu": "Some CPU", "cpu_count": 2, "gpu": None}}))
    table = benchmark_table("bench_x", tmp_path)
    assert "| ours | 9 |" in table and "--epochs 2" in table and "Some CPU (2 CPU cores)" in table
    (tmp_path / "bench_y.json").write_text("{not json")
    assert "unreadable" in benchmark_table("bench_y", tmp_path)


def test_compare_backbones_counts_what_torchvision_publishes():
    """Counted on the meta device, the sizes and multiply-adds equal torchvision's own figures for its weights."""
    import torchvision.models as tvm

    from src.notebook import compare_backbones, format_rows

    rows = compare_backbones(["efficientnet_lite0", "resnet18"])
    lite, resnet = rows
    meta = tvm.get_model_weights("resnet18").DEFAULT.meta
    assert resnet["params_M"] == round(meta["num_params"] / 1e6, 1)
    assert resnet["GMACs_224px"] == pytest.approx(meta["_ops"], abs=0.01)
    assert resnet["imagenet_top1"] == meta["_metrics"]["ImageNet-1K"]["acc@1"] and resnet["features"] == 512
    # EfficientNet-Lite0: 4.7M weights and about 0.4 GMACs per the authors; its weights come with pip
    assert lite["params_M"] == 4.7 and 0.35 < lite["GMACs_224px"] < 0.42 and lite["features"] == 1280
    assert lite["weights_on_disk"] is True
    assert format_rows(rows).splitlines()[0].split() == list(lite)
