"""Open-set recognition: the landmark index (FAISS), calibration of "no known landmark", enrolment without
training, and one decision from predict, tag and the app. Tiny real models on generated photos."""
from __future__ import annotations

import csv
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from PIL import Image
from torch import nn

from src import index as index_module
from src.__main__ import main as cli
from src.calibrate import calibrate_model
from src.index import LandmarkIndex, LandmarkIndexError, index_path_for
from src.openset import (
    FALLBACK_MIN_PROB,
    auroc,
    choose_threshold,
    confidence,
    fit_confidence,
    fit_open_set,
    global_average_precision,
    leave_one_source_out,
    open_set_summary,
    split_negatives,
)
from src.predictor import Predictor, export_torchscript, make_predictor
from src.recognizer import Recognizer
from src.transfer import TransferModel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


# ---- metrics and thresholds ------------------------------------------------------------------------------------

def test_choose_threshold_lets_at_most_the_target_share_through():
    scores = np.linspace(0, 1, 200)
    for rate in (0.0, 0.02, 0.1, 0.5):
        t = choose_threshold(scores, rate)
        assert np.mean(scores >= t) <= rate + 1e-12
        assert np.mean(scores >= np.nextafter(t, -np.inf) - 1e-3) > rate - 0.01  # and no stricter than needed
    ties = [0.5] * 10 + [0.1] * 90
    assert np.mean(np.array(ties) >= choose_threshold(ties, 0.05)) == 0.0  # ties never let one more through


def test_auroc_and_gap_on_hand_computed_cases():
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1, 2], [3, 4]) == 0.0 and auroc([1], [1]) == 0.5
    assert auroc([2, 4], [1, 3]) == pytest.approx(0.75)
    # ranked: right (P=1), wrong, right (P=2/3); 3 photos with a known landmark -> (1 + 2/3) / 3
    gap = global_average_precision(["a", "b", "c", None], [0.9, 0.8, 0.7, 0.1], ["a", None, "c", "d"])
    assert gap == pytest.approx((1 + 2 / 3) / 3)
    summary = open_set_summary(["a", "b", "c", "x"], [0.9, 0.8, 0.2, 0.95], ["a", "c", "c", None], 0.5)
    assert summary["known_tagged_right"] == pytest.approx(1 / 3)
    assert summary["known_tagged_wrong"] == pytest.approx(1 / 3)
    assert summary["known_no_landmark"] == pytest.approx(1 / 3)
    assert summary["unknown_given_landmark"] == 1.0 and summary["top1_known"] == pytest.approx(2 / 3)


def test_confidence_is_calibrated_on_separable_and_noisy_scores():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 4000)
    y = rng.uniform(0, 1, 4000) < x  # P(right | score) = score
    model = fit_confidence(x.reshape(-1, 1), y)
    for lo in (0.1, 0.5, 0.8):
        sel = (x > lo) & (x < lo + 0.1)
        predicted = confidence(x[sel].reshape(-1, 1), model).mean()
        assert abs(predicted - y[sel].mean()) < 0.06


def test_negatives_split_into_two_fixed_disjoint_halves_of_each_kind(tmp_path):
    for kind in ("animals", "food", "rooms"):
        (tmp_path / kind).mkdir()
        for i in range(7):
            make_photo(tmp_path / kind / f"{kind}{i}.jpg", 0, i)
    halves = split_negatives(tmp_path)
    cal, mea = halves["calibrate"], halves["measure"]
    assert not set(cal) & set(mea) and len(cal) + len(mea) == 21
    for kind in ("animals", "food", "rooms"):
        assert sum(p.parent.name == kind for p in cal) == 4 and sum(p.parent.name == kind for p in mea) == 3
    again = split_negatives(tmp_path)
    assert again == halves  # same on every run


def sources_fixture(seed: int = 7):
    """Known photos (score, margin) and three sources without a landmark, one of them harder than the others."""
    rng = np.random.default_rng(seed)
    known = np.c_[rng.normal(0.8, 0.08, 120), rng.normal(0.25, 0.08, 120)]
    right = rng.uniform(size=120) < 0.85
    sources = {"easy": np.c_[rng.normal(0.35, 0.08, 80), rng.normal(0.05, 0.04, 80)],
               "also easy": np.c_[rng.normal(0.4, 0.08, 60), rng.normal(0.06, 0.04, 60)],
               "hard": np.c_[rng.normal(0.62, 0.1, 50), rng.normal(0.12, 0.06, 50)]}
    return known, right, sources


def test_leave_one_source_out_is_deterministic_and_measures_each_source_left_out_of_the_fit():
    known, right, sources = sources_fixture()
    model, threshold = fit_open_set(known, right, sources, 0.02)
    again = fit_open_set(known, right, dict(reversed(list(sources.items()))), 0.02)  # order does not matter
    assert threshold == again[1] and model == again[0]
    pooled = np.concatenate([confidence(f, model) for f in sources.values()])
    assert np.mean(pooled >= threshold) <= 0.02 < np.mean(pooled >= np.nextafter(threshold, 0) - 0.01)
    strict_model, strict = fit_open_set(known, right, sources, 0.02, rule="per_source")
    assert strict_model == model and strict >= threshold
    for name, features in sources.items():  # per source: every source within the target, not just all pooled
        assert np.mean(confidence(features, model) >= strict) <= 0.02
    held = leave_one_source_out(known, right, sources, 0.02)
    assert held == leave_one_source_out(known, right, sources, 0.02) and sorted(held) == sorted(sources)
    for name in sources:
        m, t = fit_open_set(known, right, {n: f for n, f in sources.items() if n != name}, 0.02)
        assert held[name] == np.mean(confidence(sources[name], m) >= t)
    # the hard source, never seen by its fit, is given landmarks more often than the target: what LOSO is for
    assert held["hard"] > 0.02 >= held["easy"]
    assert leave_one_source_out(known, right, {"only": sources["easy"]}) == {}


# ---- the index ---------------------------------------------------------------------------------------------------

def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_index(embeddings, labels, n_classes):
    classes = [{"class": f"{i:02d}.Place_{i}", "name": f"Place {i}", "city": None, "country": None, "lat": None,
                "lon": None, "source": "trained"} for i in range(n_classes)]
    return LandmarkIndex(embeddings, labels, classes, [f"r{i}" for i in range(len(labels))],
                         {"dim": embeddings.shape[1], "class_names": [c["class"] for c in classes], "probe": []})


def test_faiss_search_equals_brute_force():
    rng = np.random.default_rng(1)
    refs, queries = unit(rng, 500, 16), unit(rng, 30, 16)
    index = make_index(refs, rng.integers(0, 5, 500), 5)
    sims, ids = index.search(queries, 10)
    brute = queries @ refs.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    assert np.array_equal(ids, expected)
    assert np.allclose(sims, np.take_along_axis(brute, expected, axis=1), atol=1e-5)


def test_class_scores_are_the_mean_of_each_class_nearest_references():
    rng = np.random.default_rng(2)
    refs, queries = unit(rng, 60, 8), unit(rng, 12, 8)
    labels = rng.integers(0, 4, 60)
    index = make_index(refs, labels, 4)
    scores = index.class_scores(queries, neighbours=60)
    brute = queries @ refs.T
    for q in range(12):
        for c in range(4):
            top = np.sort(brute[q, labels == c])[::-1][:3]
            assert scores[q, c] == pytest.approx(top.mean(), abs=1e-5)
    # leaving a query's own reference out (calibrating on photos that are references too)
    own = index.class_scores(refs[:5], exclude=list(range(5)), neighbours=60)
    for q in range(5):
        others = np.delete(refs @ refs[q], q)
        other_labels = np.delete(labels, q)
        c = labels[q]
        assert own[q, c] == pytest.approx(np.sort(others[other_labels == c])[::-1][:3].mean(), abs=1e-5)


def test_large_index_is_approximate_and_still_finds_the_nearest(monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 1000)
    rng = np.random.default_rng(3)
    centres = unit(rng, 50, 32)
    labels = rng.integers(0, 50, 6000)
    refs = centres[labels] + 0.15 * rng.normal(size=(6000, 32)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    index = make_index(refs, labels, 50)
    assert "IVF" in type(index._index()).__name__
    queries = refs[:200] + 0.05 * rng.normal(size=(200, 32)).astype(np.float32)
    scores = index.class_scores(queries)
    assert np.mean(scores.argmax(axis=1) == labels[:200]) >= 0.9
    # candidates re-ranked exactly: the similarities are the true ones, in order, and the nearest is found
    q = queries.astype(np.float32)
    sims, ids = index.search(q, 10)
    assert np.allclose(sims, np.einsum("qd,qkd->qk", q, refs[ids]), atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-7)
    exact = (q @ refs.T).argmax(axis=1)
    assert np.mean(ids[:, 0] == exact) >= 0.95


def test_index_round_trip_and_damaged_file_is_one_line(tmp_path):
    rng = np.random.default_rng(4)
    index = make_index(unit(rng, 20, 8), rng.integers(0, 3, 20), 3)
    index.calibration = {"threshold": 0.4}
    path = index.save(tmp_path / "m.index.npz")
    back = LandmarkIndex.load(path)
    assert np.array_equal(back.embeddings, index.embeddings) and back.classes == index.classes
    assert back.calibration == {"threshold": 0.4}
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LandmarkIndexError) as err:
        LandmarkIndex.load(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


# ---- tiny transfer models: calibration, enrolment, one decision ---------------------------------------------------

class Colours(nn.Module):
    """A fixed 'backbone': the mean colour and spread of the image, which tells the generated classes apart."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), torch.ones(x.shape[0], 1)], dim=1)


def tiny_transfer(n_classes: int, seed: int = 0) -> TransferModel:
    torch.manual_seed(seed)
    return TransferModel(Colours(), 7, n_classes, MEAN, STD, "tinycolours").eval()


def export_tiny(path: Path, classes, seed=0) -> Path:
    predictor = make_predictor(tiny_transfer(len(classes), seed), classes, MEAN, STD, img_size=32, arch="tinycolours")
    export_torchscript(predictor, path)
    return path


def negatives_folder(root: Path, n: int = 20) -> Path:
    """Photos that are none of the landmarks: grey and dark noise."""
    rng = np.random.default_rng(9)
    for kind in ("grey", "dark"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n // 2):
            level = 128 if kind == "grey" else 30
            img = np.clip(level + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / kind / f"{kind}{i}.png")
    return root


@pytest.fixture
def calibrated(tmp_path, tiny_dataset):
    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    model = export_tiny(tmp_path / "model.pt", classes)
    negatives = negatives_folder(tmp_path / "everyday")
    calibrate_model(model, tiny_dataset, negatives, progress=False)
    return {"model": model, "data": tiny_dataset, "negatives": negatives, "classes": classes}


def test_export_builds_a_calibrated_index_with_a_threshold_above_every_calibration_negative(calibrated):
    recognizer = Recognizer.load(calibrated["model"])
    assert recognizer.method == "retrieval" and recognizer.calibrated
    cal = recognizer.calibration
    assert cal["known_source"] == "validation photos" and cal["negatives"] == 10
    assert len(recognizer.index) == 30  # every training photo is a reference
    assert cal["measured_on_calibration"]["negatives_given_landmark"] <= 0.02
    # photos of the landmarks are recognised; the negatives' measuring half gets no landmark
    test = sorted(p for p in (calibrated["data"] / "test").rglob("*") if p.is_file())
    assert [r["class"] for r in records(recognizer, test)] == [p.parent.name for p in test]
    measure = split_negatives(calibrated["negatives"])["measure"]
    assert all(r["status"] == "no_known_landmark" and r["lat"] is None for r in records(recognizer, measure))


def test_calibration_states_its_sources_and_the_false_rate_on_each_one_left_out(calibrated, tmp_path, capsys):
    cal = Recognizer.load(calibrated["model"]).calibration
    assert cal["sources"] == {"everyday": 10, "landmarks held out of the index": 6}
    assert sorted(cal["held_out_false_rate"]) == sorted(cal["sources"])
    assert cal["promise"] == max(cal["held_out_false_rate"].values()) and cal["promise_measured"]
    assert cal["threshold_source"].startswith("calibrated on 10 photos without a known landmark from 1 source + 6 "
                                              "photos of landmarks held out of the index")
    # two folders; one split into a source per repository of its sources.csv
    more = negatives_folder(tmp_path / "more", n=12)
    with open(more / "sources.csv", "w") as fh:
        fh.write("file,kind,repo\n" + "".join(f"{p.relative_to(more).as_posix()},x,org/{'a' if i % 2 else 'b'}\n"
                                               for i, p in enumerate(sorted(more.rglob("*.png")))))
    model = str(calibrated["model"])
    assert cli(["calibrate", "--model", model, "--data-dir", str(calibrated["data"]), "--negatives",
                str(calibrated["negatives"]), "--negatives", str(more)]) == 0
    printed = capsys.readouterr().out
    cal = Recognizer.load(calibrated["model"]).calibration
    assert set(cal["sources"]) == {"everyday", "more/a", "more/b", "landmarks held out of the index"}
    assert sum(cal["sources"][n] for n in ("more/a", "more/b")) == 6  # the calibration half of 12
    for name in cal["sources"]:
        assert f"  {name}: {cal['sources'][name]} photos" in printed and "when left out of the fit" in printed
    # no photos without landmarks: the fallback says so
    assert cli(["calibrate", "--model", model, "--data-dir", str(calibrated["data"]), "--negatives", "none"]) == 0
    cal = Recognizer.load(calibrated["model"]).calibration
    assert cal["threshold_source"] == "uncalibrated fallback (no photos without landmarks)"
    assert cal["promise"] is None and cal["threshold"] == 0.9


def test_a_fresh_clone_without_shared_photos_calibrates_on_the_photos_it_ships(tmp_path, tiny_dataset, monkeypatch,
                                                                               capsys):
    from src import calibrate as calibrate_module

    monkeypatch.delenv("LANDMARK_NEGATIVES")
    monkeypatch.setattr(calibrate_module, "PROJECT_ROOT", tmp_path / "clone")  # no ../shared beside it
    assert calibrate_module.default_negatives_dir() == [calibrate_module.SHIPPED_NEGATIVES]
    shipped = sorted(p.relative_to(calibrate_module.SHIPPED_NEGATIVES).as_posix()
                     for p in calibrate_module.SHIPPED_NEGATIVES.rglob("*") if p.is_file()
                     and p.name not in ("sources.csv", "README.md"))
    assert sum((calibrate_module.SHIPPED_NEGATIVES / p).stat().st_size for p in shipped) < 10e6
    with open(calibrate_module.SHIPPED_NEGATIVES / "sources.csv", newline="", encoding="utf-8") as fh:
        listed = list(csv.DictReader(fh))
    # every shipped photo is listed once, with its kind (its folder), source repository, path there and licence
    assert sorted(row["file"] for row in listed) == shipped
    for row in listed:
        assert row["file"].endswith(".jpg") and row["file"].split("/")[0] == row["kind"]
        assert row["repo"] and row["source_path"] and row["licence"].strip()
    repos = Counter(f"calibration_photos/{row['repo'].rstrip('/').split('/')[-1]}" for row in listed)
    assert len(repos) >= 2 and len(shipped) >= 7
    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    model = export_tiny(tmp_path / "model.pt", classes)
    assert cli(["calibrate", "--model", str(model), "--data-dir", str(tiny_dataset)]) == 0
    printed = capsys.readouterr().out
    cal = Recognizer.load(model).calibration
    # one calibration source per repository of sources.csv, each photo whole (no measuring half kept back)
    assert cal["sources"] == {**repos, "landmarks held out of the index": 6}
    assert cal["threshold_source"].startswith(f"calibrated on {len(shipped)} photos without a known landmark "
                                              f"from {len(repos)} sources")
    assert cal["threshold"] != 0.9 and isinstance(cal["promise"], float)
    assert set(cal["held_out_false_rate"]) == set(cal["sources"])
    for name, count in repos.items():
        assert f"  {name}: {count} photos" in printed
    assert "when left out of the fit" in printed


def test_retrieval_confidence_uses_the_classifier_and_enrolled_landmarks_share_the_threshold(calibrated, tmp_path):
    recognizer = Recognizer.load(calibrated["model"])
    cal = recognizer.calibration
    assert len(cal["confidence"]["weights"]) == 3 and len(cal["confidence_enrolled"]["weights"]) == 2
    # the enrolled model lets through the same share of the calibration negatives at the one threshold
    n = 3
    negatives = np.concatenate([np.asarray(cal["samples"]["everyday"]).reshape(-1, n),
                                np.asarray(cal["samples"]["unknown_landmarks"]).reshape(-1, n)])
    given = np.mean(confidence(negatives[:, :2], cal["confidence_enrolled"]) >= recognizer.default_min_prob)
    assert given <= cal["max_false_rate"] + 1e-9
    # a retrieved landmark's confidence takes the classifier's probability of it as its third feature
    scores, probs = np.array([[0.6, 0.5, 0.1]]), np.array([[0.3, 0.6, 0.1]])
    got = recognizer.confidences(scores, probs)[0]
    assert got[0] == pytest.approx(confidence(np.array([[0.6, 0.1, 0.3]]), cal["confidence"])[0])
    assert got[1] == pytest.approx(confidence(np.array([[0.5, -0.1, 0.6]]), cal["confidence"])[0])
    # an index calibrated before the third feature is refused in one line, with what to do
    path = index_path_for(calibrated["model"])
    old = LandmarkIndex.load(path)
    old.calibration = dict(old.calibration, confidence=fit_confidence(np.array([[0.1, 0.0], [0.9, 0.5]]),
                                                                      np.array([0.0, 1.0])))
    old.calibration.pop("confidence_enrolled")
    stale = old.save(tmp_path / "stale.index.npz")
    with pytest.raises(LandmarkIndexError, match="older version.*python -m src calibrate"):
        LandmarkIndex.load(stale)


def records(recognizer, paths):
    from src.pipeline import decode_for_batch

    batch = torch.stack([decode_for_batch(p, recognizer.resize_size, recognizer.img_size) for p in paths])
    return recognizer.records(batch, [str(p) for p in paths], k=3)


def test_index_of_another_model_is_refused_in_one_line(calibrated, tmp_path):
    other = export_tiny(tmp_path / "other.pt", calibrated["classes"], seed=1)
    with open(index_path_for(calibrated["model"]), "rb") as src, open(index_path_for(other), "wb") as dst:
        dst.write(src.read())
    # same classes and size, other weights: the probe embeddings give it away
    other_model = make_predictor(tiny_transfer(3, 1), calibrated["classes"], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1],
                                 img_size=32, arch="tinycolours")
    export_torchscript(other_model, other)
    with pytest.raises(LandmarkIndexError) as err:
        Recognizer.load(other)
    assert "another model" in str(err.value) and "\n" not in str(err.value)
    assert cli(["predict", "--model", str(other), str(next((calibrated["data"] / "test").rglob("*.jpg")))]) == 1


def test_enroll_list_remove_round_trip(calibrated, tmp_path, capsys):
    new = tmp_path / "new"
    for split, n in (("train", 6), ("test", 3)):
        folder = new / split / "00.Landmark_D"
        folder.mkdir(parents=True)
        for i in range(n):
            make_photo(folder / f"d{i}.jpg", 3, i + (0 if split == "train" else 100))
    places = tmp_path / "places.json"
    places.write_text(json.dumps({"Landmark_D": {"name": "Landmark D", "city": "Dee", "country": "Deeland",
                                                 "lat": 10.5, "lon": -20.25}}))
    model = str(calibrated["model"])
    d_photo = str(new / "test" / "00.Landmark_D" / "d0.jpg")
    assert cli(["predict", "--model", model, "--json", d_photo]) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert before["class"] != "00.Landmark_D" and all(e["class"] != "00.Landmark_D" for e in before["top_k"])
    assert cli(["enroll", "--model", model, "--data-dir", str(new), "--locations", str(places)]) == 0
    assert "Enrolled 1 landmarks (6 photos)" in capsys.readouterr().out
    assert cli(["predict", "--model", model, "--json", d_photo]) == 0
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert after["status"] == "ok" and after["class"] == "00.Landmark_D"
    assert (after["city"], after["lat"], after["lon"]) == ("Dee", 10.5, -20.25)
    assert cli(["enroll", "--model", model, "--data-dir", str(new)]) == 1  # already known: one line, no change
    assert "already known" in capsys.readouterr().err
    assert cli(["enroll", "--model", model, "--list"]) == 0
    listed = capsys.readouterr().out
    assert "Landmark D" in listed and "enrolled" in listed and "4 landmarks" in listed
    assert cli(["enroll", "--model", model, "--remove", "Landmark D"]) == 0
    assert cli(["predict", "--model", model, "--json", d_photo]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["class"] != "00.Landmark_D"
    assert cli(["enroll", "--model", model, "--remove", "Nowhere"]) == 1


def test_enroll_killed_at_random_moments_leaves_a_loadable_index(calibrated, tmp_path):
    """SIGKILL while a process enrols and removes in a loop (each a full atomic rewrite): the index on disk always
    loads, with or without the landmark, never half written."""
    script = tmp_path / "churn.py"
    script.write_text(f"""
import sys, torch
sys.path.insert(0, {str(PROJECT_ROOT)!r})
from src.recognizer import Recognizer
r = Recognizer.load({str(calibrated['model'])!r})
images = [torch.full((3, r.resize_size, r.resize_size), v, dtype=torch.uint8) for v in (10, 200, 90)]
print("ready", flush=True)
while True:
    r.enroll("Churn", images, location={{"city": "X", "lat": 1.0, "lon": 2.0}})
    r.remove("Churn")
""")
    rng = np.random.default_rng(5)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        recognizer = Recognizer.load(calibrated["model"])  # loads, checks its model
        names = [c["class"] for c in recognizer.index.classes]
        assert names[:3] == calibrated["classes"] and len(recognizer.index) in (30, 33), attempt
    # what killed writers left behind is removed by the next write, once stale (a live writer's never is)
    path = index_path_for(calibrated["model"])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (path.parent / f".{path.name}.{gone.stdout.strip()}.abc.tmp").write_bytes(b"half an index")
    leftovers = [p for p in path.parent.glob(f".{path.name}.*.tmp")]
    live = path.parent / f".{path.name}.{os.getpid()}.live.tmp"
    live.write_bytes(b"x")
    for tmp in leftovers + [live]:
        os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    LandmarkIndex.load(path).save(path)
    assert [p for p in path.parent.glob(f".{path.name}.*.tmp")] == [live]


def test_predict_tag_and_app_give_the_same_decision(calibrated, tmp_path, capsys):
    from src.app import classify_image_bytes, load_model
    from src.tagging import tag_folder

    photos = tmp_path / "library"
    photos.mkdir()
    for label in range(3):
        make_photo(photos / f"landmark{label}.jpg", label, 300 + label)
    for i, path in enumerate(sorted(split_negatives(calibrated["negatives"])["measure"])[:3]):
        (photos / f"everyday{i}.png").write_bytes(path.read_bytes())
    model = str(calibrated["model"])
    names = sorted(p.name for p in photos.iterdir())
    assert cli(["predict", "--model", model, "--json", *[str(photos / n) for n in names]]) == 0
    predicted = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    tag_folder(photos, model, tmp_path / "tags.csv", progress=False)
    with open(tmp_path / "tags.csv", newline="") as fh:
        tagged = {r["path"]: r for r in csv.DictReader(fh)}
    app_model = load_model(model)
    for name in names:
        app = classify_image_bytes(app_model, name, (photos / name).read_bytes(), k=3)
        p, t = predicted[name], tagged[name]
        assert p["status"] == t["status"] == ("ok" if app["known"] else "no_known_landmark"), name
        assert (p["class"] or "") == t["class"] and f"{p['prob']:.6f}" == t["prob"]
        assert app["top"][0]["prob"] == pytest.approx(p["prob"], abs=1e-6)
        assert app["threshold"] == pytest.approx(p["threshold"])
    assert sum(r["status"] == "ok" for r in predicted.values()) == 3  # the landmarks, not the everyday photos


@pytest.mark.skipif(not __import__("shutil").which("exiftool"), reason="exiftool not installed")
def test_no_known_landmark_gets_no_gps_and_no_sidecar_and_a_new_threshold_updates_both(calibrated, tmp_path, capsys):
    photos = tmp_path / "library"
    photos.mkdir()
    make_photo(photos / "landmark.jpg", 0, 400)
    src_neg = sorted(split_negatives(calibrated["negatives"])["measure"])[0]
    (photos / "everyday.png").write_bytes(src_neg.read_bytes())
    out = tmp_path / "tags.csv"
    model = str(calibrated["model"])
    assert cli(["tag", str(photos), "--model", model, "--out", str(out), "--sidecar"]) == 0
    rows = {r["path"]: r for r in csv.DictReader(open(out, newline=""))}
    assert rows["everyday.png"]["status"] == "no_known_landmark" and rows["everyday.png"]["lat"] == ""
    assert not (photos / "everyday.png.xmp").exists() and not (photos / "everyday.xmp").exists()
    assert rows["landmark.jpg"]["status"] == "ok" and (photos / "landmark.jpg.xmp").exists()
    capsys.readouterr()
    # A plain rerun with a stricter threshold re-decides, and the sidecar follows the CSV.
    assert cli(["tag", str(photos), "--model", model, "--out", str(out), "--min-prob", "1.01"]) == 0
    printed = capsys.readouterr().out
    rows = {r["path"]: r for r in csv.DictReader(open(out, newline=""))}
    assert rows["landmark.jpg"]["status"] == "no_known_landmark" and rows["landmark.jpg"]["lat"] == ""
    assert "landmark.jpg: Landmark A -> no known landmark" in printed and "1 changed" in printed
    assert not (photos / "landmark.jpg.xmp").exists()  # it held only our fields: removed with them
    # and the same command again changes nothing
    assert cli(["tag", str(photos), "--model", model, "--out", str(out), "--min-prob", "1.01"]) == 0
    assert "2 of 2 photos already tagged" in capsys.readouterr().out + capsys.readouterr().err


def test_a_model_without_embeddings_gets_a_calibrated_threshold_never_zero(tmp_path, tiny_dataset):
    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model = tmp_path / "scratch.pt"
    export_torchscript(Predictor(net, classes, MEAN, STD, img_size=32, arch="scratch"), model)
    bare = Recognizer.load(model)  # exported before this change: no index
    assert bare.method == "classifier" and not bare.calibrated and bare.min_prob >= 0.5
    calibrate_model(model, tiny_dataset, negatives_folder(tmp_path / "neg"), progress=False)
    recognizer = Recognizer.load(model)
    assert recognizer.method == "classifier" and recognizer.calibrated and recognizer.min_prob > 0
    with pytest.raises(LandmarkIndexError, match="gives no embeddings"):
        recognizer.enroll("X", [torch.zeros(3, recognizer.resize_size, recognizer.resize_size, dtype=torch.uint8)])


def test_a_model_refit_on_every_photo_gets_the_fallback_not_a_threshold_fitted_on_its_training_photos(
        tmp_path, tiny_dataset):
    """After ``--valid-size 0`` no known photo is held out: a confidence fitted on photos the model trained on
    separated them from every negative and put the threshold near 0 (every photo got a landmark)."""
    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model = tmp_path / "refit.pt"
    export_torchscript(Predictor(net, classes, MEAN, STD, img_size=32, arch="scratch"), model)
    _, index = calibrate_model(model, tiny_dataset, negatives_folder(tmp_path / "neg"), valid_size=0.0,
                               progress=False)
    cal = index.calibration
    assert cal["threshold"] == FALLBACK_MIN_PROB and cal["promise"] is None and "confidence" not in cal
    assert "negatives" not in cal and "neg" not in cal["sources"]  # not run through the model: they decide nothing
    assert cal["threshold_source"].startswith("uncalibrated fallback") and "trained on every photo" in \
        cal["threshold_source"]
    assert Recognizer.load(model).min_prob == FALLBACK_MIN_PROB
    # the same model with a validation split held out is calibrated as before
    _, index = calibrate_model(model, tiny_dataset, negatives_folder(tmp_path / "neg"), progress=False)
    assert index.calibration["threshold_source"].startswith("calibrated on")


@pytest.mark.parametrize("member_args,calibrated_on_landmarks", [
    ([{"seed": 42}, {"seed": 1, "split_seed": 42}], True),  # one split, other initialisations
    ([{"seed": 42}, {"seed": 1}], False),  # each member held out other photos: none is held out from both
])
def test_an_ensemble_is_calibrated_on_its_landmarks_only_when_its_members_share_a_validation_split(
        tmp_path, tiny_dataset, capsys, member_args, calibrated_on_landmarks):
    """An ensemble of embedding models gets an index like one model; its validation photos must be held out from
    every member, else the threshold would be fitted on photos some member trained on."""
    import argparse

    from src.export import build_export_index
    from src.predictor import Ensemble

    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    checkpoints = []
    for i, saved in enumerate(member_args):
        path = tmp_path / f"member{i}.pt"
        torch.save({"format": "landmark-tagger/1", "arch": "tinycolours", "model_kwargs": {}, "model": {},
                    "class_names": classes, "mean": MEAN, "std": STD, "img_size": 32, "epoch": 1, "history": [],
                    "args": {**saved, "valid_size": 0.2, "data_dir": str(tiny_dataset)}}, path)
        checkpoints.append(str(path))
    out = tmp_path / "ensemble.pt"
    ensemble = Ensemble([tiny_transfer(len(classes), 0), tiny_transfer(len(classes), 1)])
    export_torchscript(make_predictor(ensemble, classes, MEAN, STD, img_size=32, arch="ensemble"), out)
    args = argparse.Namespace(checkpoint=checkpoints, data_dir=None, valid_size=None, seed=None,
                              negatives=[str(negatives_folder(tmp_path / "neg"))], max_false_rate=0.02)
    build_export_index(out, args)
    printed = capsys.readouterr().out
    recognizer = Recognizer.load(out)
    assert recognizer.method == "retrieval" and recognizer.index.dim == 14  # two members' 7 features
    cal = recognizer.index.calibration
    if calibrated_on_landmarks:
        assert cal["known_source"] == "validation photos" and cal["threshold_source"].startswith("calibrated on")
        assert "different training/validation splits" not in printed
    else:
        assert "different training/validation splits" in printed and "--split-seed" in printed
        assert cal["threshold"] == FALLBACK_MIN_PROB and cal["threshold_source"].startswith("uncalibrated")


def test_the_app_adds_a_landmark_from_a_few_photos_and_then_recognises_it(calibrated):
    from src.app import LandmarkApp, classify_image_bytes, load_model

    def jpeg(label, index):
        path = make_photo(calibrated["model"].parent / f"upload_{label}_{index}.jpg", label, index)
        return path.read_bytes()

    model = load_model(calibrated["model"])
    app = LandmarkApp(model, model_path=calibrated["model"])
    new_photo = jpeg(3, 900)
    assert classify_image_bytes(model, "d.jpg", new_photo)["top"][0]["class_name"] != "Landmark_D"
    app.new_name.value = "Landmark D"
    app.new_city.value, app.new_country.value = "Dee", "Deeland"
    app.new_lat.value, app.new_lon.value = "10.5", "-20.25"
    files = [(f"d{i}.jpg", jpeg(3, i)) for i in range(5)] + [("broken.jpg", b"not a photo")]
    app.new_photos.value = tuple({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
                                  "last_modified": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)}
                                 for name, data in files)
    app._on_add()
    assert "Added Landmark D (5 photos, Dee, Deeland). 1 files skipped" in app.enroll_status.value
    result = classify_image_bytes(model, "d.jpg", new_photo, k=2)
    assert result["known"] and result["top"][0]["name"] == "Landmark D"
    assert result["top"][0]["location"] == {"city": "Dee", "country": "Deeland", "lat": 10.5, "lon": -20.25}
    # saved: a new process (predict, tag, the service) knows it too
    assert "Landmark_D" in [c["class"] for c in Recognizer.load(calibrated["model"]).classes()]
    app.new_name.value = ""
    app._on_add()
    assert "give the landmark a name" in app.enroll_status.value


@pytest.mark.skipif(not __import__("shutil").which("exiftool"), reason="exiftool not installed")
def test_photos_tagged_earlier_get_metadata_when_asked_later_even_beside_another_programs_sidecar(calibrated, tmp_path,
                                                                                                 capsys):
    from test_metadata import DARKTABLE_SIDECAR

    photos = tmp_path / "library"
    photos.mkdir()
    make_photo(photos / "landmark.jpg", 0, 400)
    (photos / "landmark.jpg.xmp").write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    out, model = tmp_path / "tags.csv", str(calibrated["model"])
    assert cli(["tag", str(photos), "--model", model, "--out", str(out)]) == 0
    assert "Landmark A" not in (photos / "landmark.jpg.xmp").read_text(encoding="utf-8")
    capsys.readouterr()
    assert cli(["tag", str(photos), "--model", model, "--out", str(out), "--sidecar"]) == 0
    text = (photos / "landmark.jpg.xmp").read_text(encoding="utf-8")
    assert "Landmark A" in text and "darktable:history" in text  # ours merged in, theirs kept
    assert "1 of 1 photos already tagged" in capsys.readouterr().out
