"""Which embedding should the landmark index search: the classifier's own features, a metric-learning head
(sub-center ArcFace, from pytorch-metric-learning) trained on them, or the ImageNet backbone's features?

Chosen on held-out data only, never the test photos: references = the training split of landmarks13, queries =
its validation split (the model did not train on them), the calibration half of everyday (photos without
landmarks), and the validation photos again with their own landmark left out of the index (landmarks the index
does not know; new_landmarks/train, never fitted on, as landmarks nobody trained on). For each embedding: top-1
of the nearest landmark, AUROC of known vs the rest, and the share
of known photos tagged right when at most 2 % of the others get a landmark (threshold and confidence fitted by
5-fold cross-validation, as ``python -m src calibrate`` fits them); and enrolment: leave-one-out top-1 on
new_landmarks/train added to the index.

    pip install pytorch-metric-learning==2.9.0   # only this benchmark needs it
    python benchmarks/bench_embedding.py --model checkpoints/transfer_exported.pt

Writes ``benchmarks/results/bench_embedding.json``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import add_open_set_data_arguments, format_table, save_results

from src.backends import load_backend
from src.data import load_landmark_data, scan_split
from src.efficientnet_lite import LITE_MEAN, LITE_STD, build_efficientnet_lite
from src.openset import (
    auroc,
    choose_threshold,
    confidence,
    fit_confidence,
    split_negatives,
    top_features,
    without_class,
)
from src.pipeline import decode_for_batch, iter_predictions
from src.predictor import resize_and_center_crop, to_unit_float

PER_CLASS = 3


def model_outputs(backend, paths):
    """``(embeddings, classifier probabilities)`` of the photos."""
    results = list(iter_predictions(backend, paths, progress=False))
    return np.stack([r.embedding.numpy() for r in results]), np.stack([r.probs.numpy() for r in results])


def imagenet_embeddings(paths, resize_size: int, img_size: int):
    net = build_efficientnet_lite("efficientnet_lite0").eval()
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(paths), 16):
        batch = torch.stack([decode_for_batch(p, resize_size, img_size) for p in paths[i:i + 16]])
        with torch.no_grad():
            x = (resize_and_center_crop(to_unit_float(batch), resize_size, img_size) - mean) / std
            out.append(F.normalize(net(x), dim=1).numpy())
    return np.concatenate(out)


def train_arcface(features, labels, n_classes, dim=512, epochs=200, seed=0):
    """A linear projection trained with sub-center ArcFace on the (frozen) features; returns it as a function."""
    from pytorch_metric_learning.losses import SubCenterArcFaceLoss

    torch.manual_seed(seed)
    x, y = torch.from_numpy(features).float(), torch.from_numpy(labels).long()
    proj = torch.nn.Linear(x.shape[1], dim)
    loss_fn = SubCenterArcFaceLoss(num_classes=n_classes, embedding_size=dim, sub_centers=3)
    opt = torch.optim.AdamW([*proj.parameters(), *loss_fn.parameters()], lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = loss_fn(proj(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lambda f: F.normalize(proj(torch.from_numpy(f).float()), dim=1).detach().numpy()


def class_scores(sims, ref_labels, n_classes):
    return np.stack([np.sort(sims[:, ref_labels == c], axis=1)[:, ::-1][:, :PER_CLASS].mean(axis=1)
                     for c in range(n_classes)], axis=1)


def evaluate(train, valid, everyday, new, train_l, valid_l, n_classes, seed=0, probs=None):
    """``new``: photos of landmarks nobody trained on (new_landmarks/train): never fitted on, only counted.
    ``probs``: the classifier's probabilities (``{"valid", "everyday", "new"}``) as a third confidence feature, as
    ``python -m src calibrate`` uses them (held-out photos: without their own landmark, renormalised)."""
    p = probs or {}
    known = class_scores(valid @ train.T, train_l, n_classes)
    unseen = top_features(class_scores(new @ train.T, train_l, n_classes), p.get("new"))
    right = known.argmax(axis=1) == valid_l
    held_out = known.copy()
    held_out[np.arange(len(valid)), valid_l] = -1.0
    neg = class_scores(everyday @ train.T, train_l, n_classes)
    x = np.concatenate([top_features(known, p.get("valid")), top_features(neg, p.get("everyday")),
                        top_features(held_out, without_class(p["valid"], valid_l) if probs else None)])
    y = np.concatenate([right, np.zeros(len(neg) + len(held_out), bool)]).astype(float)
    is_known = np.r_[np.ones(len(known), bool), np.zeros(len(neg) + len(held_out), bool)]
    fold = np.random.default_rng(seed).integers(0, 5, len(x))
    tagged_right = given = unseen_given = 0
    for f in range(5):
        fitted = fit_confidence(x[fold != f], y[fold != f])
        conf = confidence(x, fitted)
        threshold = choose_threshold(conf[(fold != f) & ~is_known], 0.02)
        test = fold == f
        tagged_right += int(np.sum((conf >= threshold) & test & is_known & (y == 1)))
        given += int(np.sum((conf >= threshold) & test & ~is_known))
        unseen_given += int(np.sum(confidence(unseen, fitted) >= threshold))
    top = known.max(axis=1)
    return {"top1": float(right.mean()), "auroc_everyday": auroc(top[right], neg.max(axis=1)),
            "auroc_unknown_landmarks": auroc(top[right], held_out.max(axis=1)),
            "tagged_right_at_2pct": tagged_right / len(known), "others_given": given / (len(neg) + len(held_out)),
            "new_landmarks_given": unseen_given / (5 * len(unseen))}


def enrol_loo(train, train_l, new, new_l, n_classes):
    refs = np.concatenate([train, new])
    labels = np.concatenate([train_l, new_l + n_classes])
    sims = new @ refs.T
    sims[np.arange(len(new)), len(train) + np.arange(len(new))] = -9.0
    scores = class_scores(sims, labels, n_classes + int(new_l.max()) + 1)
    return float(np.mean(scores.argmax(axis=1) == new_l + n_classes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_open_set_data_arguments(parser)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the ArcFace head")
    parser.add_argument("--name", default="bench_embedding")
    args = parser.parse_args(argv)

    backend = load_backend(args.model)
    data = load_landmark_data(args.data_dir, valid_size=0.2, seed=42)
    number = {c: i for i, c in enumerate(backend.class_names)}
    train_p = [p for p, _ in data.train]
    valid_p = [p for p, _ in data.valid]
    train_l = np.array([number[data.class_names[y]] for _, y in data.train])
    valid_l = np.array([number[data.class_names[y]] for _, y in data.valid])
    everyday_p = split_negatives(args.negatives)["calibrate"]
    new_samples = scan_split(Path(args.new) / "train")
    new_p, new_l = [p for p, _ in new_samples], np.array([y for _, y in new_samples])
    n = len(backend.class_names)

    started = time.perf_counter()
    outputs = {k: model_outputs(backend, v) for k, v in (("train", train_p), ("valid", valid_p),
                                                          ("everyday", everyday_p), ("new", new_p))}
    ours = {k: e for k, (e, _) in outputs.items()}
    probs = {k: p for k, (_, p) in outputs.items()}
    imagenet = {k: imagenet_embeddings(v, backend.resize_size, backend.img_size)
                for k, v in (("train", train_p), ("valid", valid_p), ("everyday", everyday_p), ("new", new_p))}
    print(f"embeddings in {time.perf_counter() - started:.0f} s")
    candidates = {"classifier's own features (pooled, 1280)": ours,
                  "same + the classifier's probability as 3rd feature (default)": ours,
                  "ImageNet features (no fine-tuning, 1280)": imagenet}
    for seed in (int(s) for s in args.seeds.split(",")):
        head = train_arcface(ours["train"], train_l, n, seed=seed)
        candidates[f"sub-center ArcFace head on them (512, seed {seed})"] = {k: head(v) for k, v in ours.items()}
    rows = []
    for name, e in candidates.items():
        result = evaluate(e["train"], e["valid"], e["everyday"], e["new"], train_l, valid_l, n,
                          probs=probs if "3rd feature" in name else None)
        result["enrol_loo_top1"] = enrol_loo(e["train"], train_l, e["new"], new_l, n)
        rows.append({"embedding": name, **{k: round(v, 4) for k, v in result.items()},
                     "shown": {k: f"{v:.1%}" if k != "auroc_everyday" and "auroc" not in k else f"{v:.3f}"
                               for k, v in result.items()}})
    columns = [("embedding", "embedding")] + [(k, h) for k, h in (
        ("top1", "top-1 (valid)"), ("auroc_everyday", "AUROC vs everyday"),
        ("auroc_unknown_landmarks", "AUROC vs unknown landmarks"),
        ("tagged_right_at_2pct", "tagged right at 2 %"), ("others_given", "others given one"),
        ("new_landmarks_given", "untrained landmarks given one"),
        ("enrol_loo_top1", "new landmarks enrolled, top-1 (LOO)"))]
    table_rows = [{"embedding": r["embedding"], **r["shown"]} for r in rows]
    save_results(args.name, "bench_embedding.py", argv, rows, format_table(table_rows, columns),
                 protocol="validation split + everyday calibration half + leave-own-landmark-out; no test photos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
