"""The backlog job on Ray Data (src/cluster.py): the same decisions as ``tag`` row for row, resume, bad photos as
error rows, a killed model replica retried by Ray with every photo once, object-store style URIs, list files, and
the local metadata step. One local Ray instance for the module (2 CPUs, a small object store)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import SHARED_DATA, make_dataset, make_photo
from src.__main__ import main as cli
from src.calibrate import calibrate_model
from src.cluster import decode_batch, tag_on_ray
from src.cluster_io import PARTS, RESULTS_CSV, RowFormat, list_source, read_shards
from src.export import export_onnx
from src.helpers import file_sha256
from src.predictor import export_torchscript, make_predictor
from src.tagging import CSV_COLUMNS, read_existing_rows, record_to_row, rows_to_csv, tag_folder
from src.transfer import TransferModel

ray = pytest.importorskip("ray")  # the cluster extra: pip install .[cluster]
pq = pytest.importorskip("pyarrow.parquet")
psutil = pytest.importorskip("psutil")
pytest.importorskip("onnxruntime")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = [0.48, 0.45, 0.41], [0.23, 0.22, 0.24]
FMT = RowFormat(tuple(CSV_COLUMNS), record_to_row, rows_to_csv, read_existing_rows)
COMPARED = ("status", "landmark", "class", "prob", "top_k")


class Colours(nn.Module):
    """A fixed 'backbone' (mean colour and spread) that tells the generated classes apart."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), torch.ones(x.shape[0], 1)], dim=1)


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """One local Ray instance for the module; its GCS address, for drivers started as other processes."""
    if ray.is_initialized():
        ray.shutdown()
    temp = tmp_path_factory.mktemp("ray")
    context = ray.init(num_cpus=2, object_store_memory=150 * 1024 ** 2, include_dashboard=False,
                       log_to_driver=False, logging_level="warning", _temp_dir=str(temp),
                       runtime_env={"py_modules": [str(PROJECT_ROOT / "src")], "excludes": ["__pycache__"]})
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny transfer model exported as TorchScript + ONNX, its index calibrated: the retrieval decision."""
    folder = tmp_path_factory.mktemp("model")
    data = make_dataset(folder / "data", n_classes=3, n_train=8, n_test=2)
    classes = sorted(p.name for p in (data / "train").iterdir())
    torch.manual_seed(0)
    predictor = make_predictor(TransferModel(Colours(), 7, len(classes), MEAN, STD, "tinycolours").eval(), classes,
                               MEAN, STD, img_size=32, arch="tinycolours")
    pt = folder / "model.pt"
    export_torchscript(predictor, pt)
    export_onnx(predictor, pt.with_suffix(".onnx"), metadata={"torchscript_sha256": file_sha256(pt)})
    negatives = folder / "everyday"
    rng = np.random.default_rng(9)
    negatives.mkdir()
    for i in range(12):
        Image.fromarray(np.clip(128 + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)).save(
            negatives / f"grey{i}.png")
    calibrate_model(pt, data, negatives, progress=False)
    return pt


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A few hundred generated photos in sub-folders (JPEG/PNG/WEBP, two sizes), 3 broken files, plus 40 of the
    shared landmark photos when present."""
    root = tmp_path_factory.mktemp("library") / "photos"
    for label in range(4):
        folder = root / f"album{label}"
        folder.mkdir(parents=True)
        for i in range(60):
            fmt, ext = [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")][i % 3]
            make_photo(folder / f"p{i:03d}{ext}", label, i, size=(96, 72) if i % 2 else (64, 48), fmt=fmt)
    (root / "broken").mkdir()
    (root / "broken" / "empty.jpg").write_bytes(b"")
    (root / "broken" / "text.jpg").write_bytes(b"not a photo at all")
    (root / "broken" / "cut.jpg").write_bytes((root / "album0" / "p000.jpg").read_bytes()[:300])
    (root / ".hidden").mkdir()
    make_photo(root / ".hidden" / "skip.jpg", 0, 0)
    if SHARED_DATA.is_dir():
        shared = sorted((SHARED_DATA / "test").rglob("*.jpg"))[::7][:40]
        (root / "shared").mkdir()
        for i, path in enumerate(shared):
            shutil.copyfile(path, root / "shared" / f"{i:02d}_{path.name}")
    return root


def csv_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def runs(ray_instance, model, photos, tmp_path_factory) -> dict:
    """``tag`` and the Ray job on the same library, once for the module."""
    folder = tmp_path_factory.mktemp("runs")
    plain = tag_folder(photos, model, folder / "plain.csv", progress=False)
    ray_run = tag_on_ray(photos, model, folder / "results", FMT, address=ray_instance, actors=1, batch_size=8,
                         progress=False)
    return {"plain": plain, "photos": photos, "expected": csv_rows(folder / "plain.csv"), "ray": ray_run,
            "results": folder / "results"}


def test_ray_job_gives_tags_answers_row_for_row(runs):
    expected, results = runs["expected"], runs["results"]
    got = csv_rows(results / RESULTS_CSV)
    assert len(expected) >= 240 and set(got) == set(expected)  # same photos, hidden folder left out
    assert runs["ray"].total == runs["plain"].total and runs["ray"].errors == runs["plain"].errors == 3
    mismatched = [(p, {c: (expected[p][c], got[p][c]) for c in COMPARED if expected[p][c] != got[p][c]})
                  for p in sorted(expected) if any(expected[p][c] != got[p][c] for c in COMPARED)]
    assert not mismatched, mismatched[:5]
    assert {r["status"] for r in got.values()} >= {"ok", "no_known_landmark", "error"}
    assert got["broken/empty.jpg"]["error"].endswith("empty file (0 bytes)")
    assert all(got[p]["decided_by"] == expected[p]["decided_by"] for p in got if got[p]["status"] != "error")
    # the shards hold every photo exactly once; the CSV has tag's columns, and what report needs beside it
    assert sorted(r["path"] for r in read_shards(results, ["path"])) == sorted(expected)
    with open(results / RESULTS_CSV, encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == list(CSV_COLUMNS)
    assert json.loads((results / (RESULTS_CSV + ".json")).read_text())["folder"] == str(runs["photos"].resolve())
    assert runs["ray"].first_result_s is not None and runs["ray"].first_result_s <= runs["ray"].seconds


def test_a_rerun_decides_only_what_results_lack(runs, ray_instance, model, photos, tmp_path):
    """Resume after a killed driver: the rows written stay, a shard torn mid-write is dropped, errors are retried."""
    results = tmp_path / "results"
    shutil.copytree(runs["results"], results)
    shard = sorted((results / PARTS).glob("*/*.parquet"))[0]
    lost = set(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
    shard.write_bytes(shard.read_bytes()[:100])  # what a kill mid-write leaves
    again = tag_on_ray(photos, model, results, FMT, address=ray_instance, actors=1, batch_size=8, progress=False)
    expected = runs["expected"]
    broken = {p for p in expected if p.startswith("broken/")}
    assert lost and again.skipped == len(expected) - len(lost | broken)
    final = csv_rows(results / RESULTS_CSV)
    assert set(final) == set(expected)
    assert all(final[p][c] == expected[p][c] for p in final for c in COMPARED)
    assert not shard.exists()


def test_object_store_prefixes_are_listed_and_read_through_pyarrow(photos, model):
    """No Ray needed: a file:// prefix stands for s3://... (the same pyarrow filesystem calls)."""
    listing = list_source(f"file://{photos}")
    folder = list_source(photos)
    assert listing.kind == "uri" and len(listing.uris) == len(folder.uris)
    assert listing.names[0] == f"file://{folder.uris[0]}" and not any("/.hidden/" in u for u in listing.uris)
    uris = [u for u in listing.uris if u.endswith(("album0/p001.png", "broken/empty.jpg"))] + [
        f"file://{photos}/missing.jpg"]
    out = decode_batch({"uri": np.array(uris, dtype=object), "name": np.array(uris, dtype=object)}, 40, 32)
    local = decode_batch({"uri": np.array([str(photos / "album0/p001.png")], dtype=object),
                          "name": np.array(["album0/p001.png"], dtype=object)}, 40, 32)
    assert np.array_equal(out["image"][0], local["image"][0]) and out["error"][0] == ""
    assert out["error"][1].endswith("empty file (0 bytes)") and "cannot read" in out["error"][2]


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_list_file_job_then_sidecars_written_locally_with_tags_writer(ray_instance, model, photos, tmp_path):
    library = tmp_path / "lib"
    shutil.copytree(photos / "album1", library)
    some = sorted(library.glob("*.jpg"))[:8]
    listing = tmp_path / "photos.txt"
    listing.write_text("# my backlog\n" + "\n".join(str(p) for p in some[:3]) + "\n\n" +
                       "\n".join(os.path.relpath(p, tmp_path) for p in some[3:6]) + "\n" +
                       "\n".join(f"file://{p}" for p in some[6:]) + "\nlib/nothing.jpg\n")
    results = tmp_path / "results"
    # metadata is the local step: refused with --ray, before any work
    assert cli(["tag", str(listing), "--model", str(model), "--out", str(results), "--ray", ray_instance,
                "--sidecar"]) == 1
    assert cli(["tag", str(listing), "--model", str(model), "--out", str(results), "--ray", ray_instance]) == 1
    rows = csv_rows(results / RESULTS_CSV)
    assert len(rows) == 9 and rows["lib/nothing.jpg"]["status"] == "error"
    assert "cannot read file" in rows["lib/nothing.jpg"]["error"]
    assert str(some[0]) in rows and f"file://{some[7]}" in rows and os.path.relpath(some[3], tmp_path) in rows
    assert not list(library.glob("*.xmp"))  # the cluster job never writes beside the photos
    assert cli(["tag", "--from-results", str(results), "--sidecar"]) == 0
    rows = csv_rows(results / RESULTS_CSV)
    tagged = {p for p, r in rows.items() if r["status"] == "ok"}
    assert tagged and all(rows[p]["metadata"] == "sidecar" for p in tagged)
    assert len(list(library.glob("*.xmp"))) == len(tagged)
    # the same sidecars tag --sidecar writes itself (same writer, same rows)
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in some:
        shutil.copyfile(p, plain / p.name)
    cli(["tag", str(plain), "--model", str(model), "--out", str(tmp_path / "p.csv"), "--sidecar"])
    for p in some:
        ours, theirs = Path(f"{p}.xmp"), plain / f"{p.name}.xmp"
        assert ours.exists() == theirs.exists()
        if ours.exists():
            assert _fields(ours) == _fields(theirs)


def _fields(sidecar: Path) -> list[str]:
    return sorted(line.strip() for line in sidecar.read_text().splitlines() if "Date" not in line)


def _inference_actors() -> list:
    """The model replicas of jobs on the test's Ray instance: worker processes under this process (its raylet's
    children) whose title names our actor class."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "InferActor" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_a_killed_model_replica_is_restarted_and_every_photo_comes_out_once(ray_instance, model, tmp_path):
    """The job runs on a thread; its model replica's process is SIGKILLed mid-run: Ray restarts the actor and
    retries the batches it held."""
    library = tmp_path / "many"
    for i in range(400):
        (library / f"{i // 100}").mkdir(parents=True, exist_ok=True)
        make_photo(library / f"{i // 100}" / f"p{i:03d}.jpg", i % 3, i, size=(160, 120))
    results = tmp_path / "results"
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["summary"] = tag_on_ray(library, model, results, FMT, address=ray_instance, actors=1,
                                            batch_size=2, progress=False)
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc

    driver = threading.Thread(target=job)
    driver.start()
    killed = None
    deadline = time.time() + 150
    while time.time() < deadline and driver.is_alive() and killed is None:
        actors = _inference_actors()
        if actors and any((results / PARTS).glob("*/*.parquet")):
            killed = actors[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    assert killed is not None, "the job finished (or never started) before its replica could be killed"
    assert driver.is_alive()  # mid-run
    driver.join(timeout=240)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.total == 400 and summary.tagged == 400 and summary.errors == 0
    paths = [r["path"] for r in read_shards(results, ["path"])]
    assert len(paths) == 400 and len(set(paths)) == 400  # every photo exactly once, in the shards themselves
    assert len(csv_rows(results / RESULTS_CSV)) == 400


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_from_results_places_a_folders_photos_from_the_librarys_evidence_as_tag_does(ray_instance, model, tmp_path):
    """The cluster decides the pixels; the local step runs tag's library pass (capture times, camera GPS) over the
    folder: the same places, sources and evidence as tag on one machine."""
    from test_placing import paris_day

    library = paris_day(tmp_path / "lib")
    together = ["--together", "Canon EOS 80D=Apple iPhone 12"]
    results = tmp_path / "results"
    assert cli(["tag", str(library), "--model", str(model), "--out", str(results), "--ray", ray_instance]) == 0
    assert cli(["tag", "--from-results", str(results), *together]) == 0  # places only, no metadata asked
    got = csv_rows(results / RESULTS_CSV)
    assert cli(["tag", str(library), "--model", str(model), "--out", str(tmp_path / "plain.csv"), *together]) == 0
    expected = csv_rows(tmp_path / "plain.csv")
    assert got["camera/_MG_001.JPG"]["location_source"] == "time"
    for name, row in expected.items():
        for column in ("status", "lat", "lon", "location_source", "accuracy_m", "evidence"):
            assert got[name][column] == row[column], (name, column)
    assert not list(library.rglob("*.xmp"))
