"""Cross-validation on the training photos (src/crossval.py, ``python -m src cv``)."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from src import crossval
from src.__main__ import main as cli
from src.crossval import cross_validate, parse_candidate, parse_member, stratified_folds, training_overrides
from src.data import load_landmark_data


@pytest.mark.parametrize("spec, expected", [
    ("efficientnet_lite0:1", ("efficientnet_lite0", 1)),
    ("efficientnet_lite2", ("efficientnet_lite2", 42)),
    (" resnet18:7 ", ("resnet18", 7)),
])
def test_parse_member(spec, expected):
    assert parse_member(spec) == expected


def test_parse_candidate_named_and_unnamed():
    assert parse_candidate("x2=efficientnet_lite0:1+efficientnet_lite0:2") == (
        "x2", [("efficientnet_lite0", 1), ("efficientnet_lite0", 2)])
    assert parse_candidate("efficientnet_lite0:3") == ("efficientnet_lite0:3", [("efficientnet_lite0", 3)])


@pytest.mark.parametrize("spec, message", [
    ("a=efficientnet_lite0:x", "seed must be an integer"),
    ("a=efficientnet_lite0:1+efficientnet_lite0:1", "listed twice"),
    ("a=", "expected NAME=ARCH:SEED"),
    ("a=:3", r"expected ARCH\[:SEED\]"),
])
def test_parse_candidate_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_candidate(spec)


def _samples(counts: dict[int, int]) -> list[tuple[Path, int]]:
    return [(Path(f"/d/train/{c:02d}.L{c}/p{i}.jpg"), c) for c, n in counts.items() for i in range(n)]


@pytest.mark.parametrize("n_folds", [2, 5])
def test_stratified_folds_cover_every_photo_once_and_spread_each_class(n_folds):
    samples = _samples({0: 13, 1: 7, 2: 22, 3: 4})
    folds = stratified_folds(samples, n_folds, seed=42)
    assert len(folds) == len(samples) and set(folds) == set(range(n_folds))
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for label in range(4):
        per_fold = Counter(f for f, (_, y) in zip(folds, samples) if y == label)
        counts = [per_fold.get(f, 0) for f in range(n_folds)]
        assert max(counts) - min(counts) <= 1, (label, counts)


def test_stratified_folds_are_deterministic_and_independent_of_listing_order():
    samples = _samples({0: 10, 1: 10, 2: 10})
    folds = dict(zip(samples, stratified_folds(samples, 5, seed=42)))
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    # the same photo lands in the same fold whatever order the photos were listed in
    assert dict(zip(shuffled, stratified_folds(shuffled, 5, seed=42))) == folds
    assert dict(zip(samples, stratified_folds(samples, 5, seed=1))) != folds


@pytest.mark.parametrize("n_folds, n_photos, message", [(1, 10, "at least 2 folds"), (5, 3, "cannot be cut")])
def test_stratified_folds_refuse_impossible_folds(n_folds, n_photos, message):
    with pytest.raises(ValueError, match=message):
        stratified_folds(_samples({0: n_photos}), n_folds)


# efficientnet_lite0 with its real ImageNet weights (from pip), on small photos: a few seconds per fold
TINY = {"img_size": 64, "epochs": 4, "workers": 0, "batch_size": 8}


def test_cross_validate_scores_members_and_ensembles_from_out_of_fold_predictions(tiny_dataset, tmp_path):
    data = load_landmark_data(tiny_dataset, valid_size=0.0)
    out = tmp_path / "cv"
    candidates = [parse_candidate("one=efficientnet_lite0:42"),
                  parse_candidate("two=efficientnet_lite0:42+efficientnet_lite0:1")]
    result = cross_validate(data, candidates, out, n_folds=3, overrides=TINY)

    assert json.loads((out / "cv.json").read_text()) == result
    assert result["n_photos"] == len(data.train) == 30 and result["fold_sizes"] == [10, 10, 10]
    labels = torch.tensor([y for _, y in data.train])
    folds = torch.tensor(stratified_folds(data.train, 3, 42))
    probs = {}
    for seed in (42, 1):
        member = torch.zeros(30, 3)
        for fold in range(3):
            saved = torch.load(out / "predictions" / f"efficientnet_lite0-seed{seed}-fold{fold}.pt", weights_only=True)
            held = (folds == fold).nonzero().flatten()
            assert saved["photos"] == [str(data.train[i][0]) for i in held.tolist()]
            assert saved["probs"].shape == (10, 3)
            assert torch.allclose(saved["probs"].sum(1), torch.ones(10), atol=1e-5)
            member[held] = saved["probs"]
        probs[seed] = member
    one, two = result["candidates"]
    assert one["correct"] == int((probs[42].argmax(1) == labels).sum())
    assert two["correct"] == int(((probs[42] + probs[1]).argmax(1) == labels).sum())
    mean = (probs[42] + probs[1]) / 2
    assert two["log_loss"] == pytest.approx(float(-mean[torch.arange(30), labels].log().mean()), abs=1e-4)
    assert two["gmacs_per_photo"] == pytest.approx(2 * one["gmacs_per_photo"], abs=0.011)
    assert [m["member"] for m in result["members"]] == ["efficientnet_lite0:42", "efficientnet_lite0:1"]
    # the three colour patterns are easy: models that never saw a photo still name most of them right
    assert one["accuracy"] >= 0.6, result
    assert result["chosen"] in ("one", "two")


def test_cross_validate_continues_from_saved_predictions_and_redoes_a_changed_recipe(tiny_dataset, tmp_path,
                                                                                     monkeypatch):
    data = load_landmark_data(tiny_dataset, valid_size=0.0)
    out = tmp_path / "cv"
    candidates = [parse_candidate("one=efficientnet_lite0:42")]
    first = cross_validate(data, candidates, out, n_folds=2, overrides=TINY)
    trained = []
    real = crossval.train_and_predict
    monkeypatch.setattr(crossval, "train_and_predict", lambda *a, **k: trained.append(1) or real(*a, **k))
    again = cross_validate(data, candidates, out, n_folds=2, overrides=TINY)
    assert trained == [] and again["candidates"] == first["candidates"]
    (out / "predictions" / "efficientnet_lite0-seed42-fold1.pt").write_bytes(b"damaged")
    cross_validate(data, candidates, out, n_folds=2, overrides=TINY)
    assert trained == [1]  # only the damaged fold is recomputed
    cross_validate(data, candidates, out, n_folds=2, overrides={**TINY, "epochs": 2})
    assert trained == [1, 1, 1]  # another recipe: both folds again


def test_cv_command_prints_the_table_and_writes_json(tiny_dataset, tmp_path, capsys):
    report = tmp_path / "cv_result.json"
    assert cli(["cv", "--data-dir", str(tiny_dataset), "--candidate", "lite0=efficientnet_lite0:42", "--folds", "2",
                "--epochs", "2", "--workers", "0", "--out", str(tmp_path / "cv"), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "2-fold cross-validation on 30 training photos" in printed and "lite0" in printed
    assert json.loads(report.read_text())["chosen"] == "lite0"


def test_cv_command_refuses_a_model_trained_from_scratch(tiny_dataset, tmp_path, capsys):
    assert cli(["cv", "--data-dir", str(tiny_dataset), "--candidate", "s=scratch:1", "--folds", "2",
                "--out", str(tmp_path / "cv")]) == 1
    assert "cross-validation needs a transfer-learning backbone" in capsys.readouterr().err


def test_set_overrides_are_typed_and_checked_by_the_training_parser():
    assert training_overrides(["unfreeze=3", "img-size=288", "augment=strong", "--n-views=6"]) == {
        "unfreeze": 3, "img_size": 288, "augment": "strong", "n_views": 6}
    for bad, message in (("nope=1", "KEY a training argument"), ("unfreeze=x", "invalid int value: 'x'"),
                         ("augment=weird", "invalid choice"), ("unfreeze", "expected KEY=VALUE")):
        with pytest.raises(ValueError, match=message):
            training_overrides([bad])
