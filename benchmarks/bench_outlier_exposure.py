"""Outlier exposure in training, measured on sources that neither training nor calibration saw.

EfficientNet-Lite0 trained on landmarks13 by the defaults of ``python -m src train`` (last 2 stages + head on
cached activations), once without photos that show no landmark and once with them as negatives whose target is
the uniform distribution (Hendrycks et al. 2019, weight ``--weights``). Everything is measured on held-out photos
only, never the landmarks13 test photos nor the measuring halves of the everyday folders:

* **leave one source out of training AND calibration**: for each everyday source (everyday, everyday2's COCO128,
  denoising_datasets, KAIR) in turn, the model is trained with the calibration halves of the *other* sources as
  negatives, calibrated (confidence + 2 % pooled threshold, as ``python -m src calibrate``) on those same halves +
  the validation photos with their own landmark left out of the index, and the left-out source's calibration half
  is measured: the share given a landmark;
* new_landmarks/train (5 landmarks nobody trained on): the share given a landmark;
* the known validation photos tagged right at that threshold (5-fold: the confidence is fitted without the fold
  it is measured on), and top-1;
* enrolment: new_landmarks/train enrolled into the index, each photo searched with its own reference left out,
  top-1 (leave-one-out).

The baseline row trains in the same loop without negatives (it reproduces ``runs/base``); its calibration leaves
the same source out, so every row is measured on the same photos. Also a 4th confidence feature: a logistic
landmark-vs-not head on the embedding, trained on the training photos vs the fitted sources' photos.

    python benchmarks/bench_outlier_exposure.py

Writes ``benchmarks/results/bench_outlier_exposure.json``.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from common import SHARED_DATA, format_table, save_results

from src.calibrate import HELD_OUT_SOURCE, negative_sources
from src.data import load_landmark_data, scan_split
from src.data_config import resize_size_for
from src.feature_cache import FeatureDataset, extract_features, feature_transforms, get_feature_loaders
from src.index import LandmarkIndex
from src.model import create_model
from src.openset import confidence, fit_confidence, fit_open_set, top_features, without_class
from src.optimization import get_optimizer, get_scheduler
from src.train import optimize
from src.transfer import CachedActivationModel
from src.train_cli import feature_loader_options, model_kwargs_from_args, resolve_defaults, train_args

CACHE = Path("runs/openset_cache")
RATE = 0.02


# The label of a training photo that shows no landmark (outlier exposure): no class, its target is uniform.
NO_LANDMARK_LABEL = -1


class OutlierExposureLoss(nn.Module):
    """Cross-entropy on the photos of a landmark, plus ``weight`` x the cross-entropy to the uniform distribution
    on photos that show none (label :data:`NO_LANDMARK_LABEL`): outlier exposure (Hendrycks et al. 2019), which
    teaches the classifier to spread its belief on photos unlike any landmark. With no such photo in a batch it
    is the plain cross-entropy."""

    def __init__(self, label_smoothing: float = 0.0, weight: float = 0.5):
        super().__init__()
        self.known = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.weight = float(weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = targets != NO_LANDMARK_LABEL
        loss = self.known(logits[known], targets[known]) if bool(known.any()) else logits.sum() * 0.0
        if self.weight > 0 and not bool(known.all()):
            # uniform target: minus the mean log-probability over the classes
            loss = loss + self.weight * -torch.log_softmax(logits[~known], dim=1).mean()
        return loss


def negative_activations(start, sources, img_size, mean, std, seed=42):
    """``{source: [N, 3, ...]}`` activations of the frozen start (plain view + 2 augmented), cached on disk."""
    path = CACHE / f"oe_negatives_{img_size}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    plain, aug = feature_transforms(img_size, mean, std)
    out = {}
    for name, paths in sources.items():
        feats, _ = extract_features(start, [(p, -1) for p in paths], plain, aug, n_views=3, seed=seed,
                                    draft_size=resize_size_for(img_size), desc=name)
        assert len(feats) == len(paths), name
        out[name] = feats.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return {k: v for k, v in out.items()}


def new_activations(start, paths, img_size, mean, std):
    path = CACHE / f"oe_new_{img_size}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    plain, aug = feature_transforms(img_size, mean, std)
    feats, labels = extract_features(start, paths, plain, aug, n_views=1, draft_size=resize_size_for(img_size),
                                     desc="new_landmarks/train")
    out = {"features": feats.half(), "labels": labels}
    torch.save(out, path)
    return out


def train_once(args, model, loaders, negatives, weight, out_dir):
    """Train ``model``'s last stages + head as ``python -m src train`` does, with ``negatives`` ``[N, V, ...]``
    (label -1) mixed into the training photos when ``weight`` > 0. Returns the best-by-validation state."""
    torch.manual_seed(args.seed)
    end, head = model.cache_split()[1], model.head
    module = CachedActivationModel(end, head, model.backbone_lr_scale)
    train_ds = loaders["train"].dataset
    feats, labels = train_ds.features, train_ds.labels
    if weight > 0 and negatives is not None:
        feats = torch.cat([feats, negatives.float()])
        labels = torch.cat([labels, torch.full((len(negatives),), -1, dtype=torch.long)])
    ds = FeatureDataset(feats, labels, sample_views=True, class_names=train_ds.class_names)
    generator = torch.Generator()
    generator.manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=generator)
    loss = OutlierExposureLoss(args.label_smoothing, weight)
    optimizer = get_optimizer(module, args.optimizer, learning_rate=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.scheduler, optimizer, args.epochs, len(train_loader),
                              warmup_epochs=args.warmup_epochs)
    optimize({"train": train_loader, "valid": loaders["valid"]}, module, optimizer, loss, args.epochs,
             Path(out_dir) / "best.pt", scheduler=scheduler, checkpoint_model=model, device="cpu", seed=args.seed)
    state = torch.load(Path(out_dir) / "best.pt", map_location="cpu", weights_only=False)["model"]
    model.load_state_dict(state)
    return module


def head_only(module, acts, train_labels, negatives, weight, epochs=10, seed=0):
    """Outlier exposure on the linear head alone, from the trained one: the embedding (retrieval, enrolment)
    stays as it is, only the classifier's probability (the 3rd confidence feature) changes. Returns the new
    outputs of every set (see :func:`outputs`)."""
    with torch.inference_mode():
        pooled = {k: torch.cat([module.end(v[i:i + 64].flatten(0, 1).float()).view(len(v[i:i + 64]), v.shape[1], -1)
                                for i in range(0, len(v), 64)]) for k, v in {"train": acts["train"],
                                                                              "neg": negatives}.items()}
    head = torch.nn.Linear(module.head.in_features, module.head.out_features)
    head.load_state_dict(module.head.state_dict())
    torch.manual_seed(seed)
    x = torch.cat([pooled["train"], pooled["neg"]])
    y = torch.cat([train_labels, torch.full((len(pooled["neg"]),), -1, dtype=torch.long)])
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    loss = OutlierExposureLoss(0.1, weight)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = order[i:i + 32]
            value = loss(head(x[idx, torch.randint(x.shape[1], (len(idx),))]), y[idx])
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    tuned = CachedActivationModel(module.end, head)
    return {k: outputs(tuned, v) for k, v in acts.items()}


@torch.inference_mode()
def outputs(module, acts):
    """(L2-normalised embeddings, softmax probabilities) of the plain view of cached activations."""
    module.eval()
    emb, probs = [], []
    for i in range(0, len(acts), 128):
        f = module.end(acts[i:i + 128, 0].float())
        emb.append(F.normalize(f, dim=1).numpy())
        probs.append(F.softmax(module.head(f), dim=1).numpy())
    return np.concatenate(emb), np.concatenate(probs).astype(np.float64)


def measure(out, train_l, valid_l, new_l, left_out, extra_feature=False, seed=0):
    """One model's outputs ``{set: (emb, probs)}`` -> the held-out measurements (see the module docstring)."""
    n_classes = out["valid"][1].shape[1]
    emb = np.concatenate([out["train"][0], out["valid"][0]])
    lab = np.concatenate([train_l, valid_l])
    index = LandmarkIndex(emb, lab, [{"class": str(i)} for i in range(n_classes)],
                          [str(i) for i in range(len(lab))], {"dim": emb.shape[1]})
    ids = np.arange(len(train_l), len(lab))
    known = index.class_scores(out["valid"][0], exclude=list(ids), neighbours=len(index))
    right = known.argmax(1) == valid_l
    held = known.copy()
    held[np.arange(len(ids)), valid_l] = -1.0

    def feats(name, scores=None, probs=None):
        s = index.class_scores(out[name][0], neighbours=len(index)) if scores is None else scores
        return top_features(s, out[name][1] if probs is None else probs)
    fitted = [n for n in out if n.startswith("src:") and n != left_out]
    sources = {n: feats(n) for n in fitted}
    sources[HELD_OUT_SOURCE] = top_features(held, without_class(out["valid"][1], valid_l))
    known_f, new_f, left_f = top_features(known, out["valid"][1]), feats("new"), feats(left_out)
    if extra_feature:  # a landmark-vs-not logistic on the embedding: training photos vs the fitted sources
        neg_emb = np.concatenate([out[n][0] for n in fitted])
        head = fit_confidence(np.concatenate([out["train"][0], neg_emb]),
                              np.r_[np.ones(len(train_l)), np.zeros(len(neg_emb))], l2=float(len(neg_emb)))
        def logit(e):
            p = np.clip(confidence(e, head), 1e-9, 1 - 1e-9)
            return np.log(p) - np.log(1 - p)
        sources = {n: np.c_[f, logit(out[n][0])] for n, f in sources.items() if n != HELD_OUT_SOURCE}
        sources[HELD_OUT_SOURCE] = np.c_[top_features(held, without_class(out["valid"][1], valid_l)),
                                         logit(out["valid"][0])]
        known_f, new_f = np.c_[known_f, logit(out["valid"][0])], np.c_[new_f, logit(out["new"][0])]
        left_f = np.c_[left_f, logit(out[left_out][0])]
    model, threshold = fit_open_set(known_f, right, sources, RATE)
    # known photos tagged right: 5-fold, the fold measured left out of the confidence fit
    fold = np.random.default_rng(seed).integers(0, 5, len(known_f))
    tagged = 0
    for f in range(5):
        m, t = fit_open_set(known_f[fold != f], right[fold != f], sources, RATE)
        tagged += int(np.sum((confidence(known_f[fold == f], m) >= t) & right[fold == f]))
    given_left = confidence(left_f, model) >= threshold
    # enrolment, leave-one-out: new_landmarks/train as references of new classes
    all_emb = np.concatenate([emb, out["new"][0]])
    all_lab = np.concatenate([lab, new_l + n_classes])
    n_all = n_classes + int(new_l.max()) + 1
    enrolled = LandmarkIndex(all_emb, all_lab, [{"class": str(i)} for i in range(n_all)],
                             [str(i) for i in range(len(all_lab))], {"dim": emb.shape[1]})
    own = list(len(lab) + np.arange(len(new_l)))
    top = enrolled.class_scores(out["new"][0], exclude=own, neighbours=len(enrolled)).argmax(1)
    return {"threshold": threshold, "top1": float(right.mean()), "tagged_right": tagged / len(known_f),
            "left_out_given": int(given_left.sum()), "left_out_n": int(len(left_f)),
            "new_given": float(np.mean(confidence(new_f, model) >= threshold)),
            "enrol_loo_top1": float(np.mean(top == new_l + n_classes))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(SHARED_DATA / "landmarks13"))
    parser.add_argument("--negatives", action="append",
                        default=None, help="folders of photos without landmarks (default everyday, everyday2)")
    parser.add_argument("--new", default=str(SHARED_DATA / "new_landmarks"))
    parser.add_argument("--weights", default="0.5", help="outlier-exposure loss weights to compare")
    parser.add_argument("--head-weights", default="0.5,2.0",
                        help="outlier exposure on the trained model's head alone, weights to compare")
    parser.add_argument("--baseline", default="runs/base/best.pt",
                        help="the checkpoint trained the same way without negatives ('': train it here)")
    parser.add_argument("--name", default="bench_outlier_exposure")
    args = parser.parse_args(argv)
    folders = args.negatives or [SHARED_DATA / "everyday", SHARED_DATA / "everyday2"]
    load = os.getloadavg()
    started = time.perf_counter()

    targs = resolve_defaults(train_args(arch="efficientnet_lite0", data_dir=args.data_dir, workers=0))
    data = load_landmark_data(targs.data_dir, valid_size=targs.valid_size, seed=targs.seed)
    model = create_model(targs.arch, len(data.class_names), **model_kwargs_from_args(targs))
    model.backbone_lr_scale = float(targs.backbone_lr_scale)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loaders = get_feature_loaders(model, data, **feature_loader_options(targs))
    start = model.cache_split()[0]
    by_source = {f"src:{k}": v for k, v in negative_sources(folders).items()}  # calibration halves only
    neg = negative_activations(start, by_source, targs.img_size, model.mean, model.std)
    new = new_activations(start, scan_split(Path(args.new) / "train"), targs.img_size, model.mean, model.std)
    acts = {"train": loaders["train"].dataset.features, "valid": loaders["valid"].dataset.features,
            "new": new["features"], **neg}
    train_l = loaders["train"].dataset.labels.numpy()
    valid_l = loaders["valid"].dataset.labels.numpy()
    new_l = new["labels"].numpy()

    weights = [0.0] + [float(w) for w in args.weights.split(",") if w]
    head_weights = [float(w) for w in args.head_weights.split(",") if w]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline_out = None
        for left_out in sorted(neg):
            for weight in weights:
                if weight == 0 and baseline_out is None and args.baseline:
                    # the model trained without negatives: training does not depend on the source left out
                    model.load_state_dict(torch.load(args.baseline, map_location="cpu", weights_only=False)["model"])
                    module = CachedActivationModel(model.cache_split()[1], model.head)
                    baseline_module = copy.deepcopy(module)  # training below reuses the model's modules
                    baseline_out = {k: outputs(baseline_module, v) for k, v in acts.items()}
                if weight == 0 and baseline_out is not None:
                    out = baseline_out
                else:
                    model.load_state_dict(initial)
                    negatives = torch.cat([neg[n] for n in sorted(neg) if n != left_out])
                    module = train_once(targs, model, loaders, negatives, weight, tmp)
                    out = {k: outputs(module, v) for k, v in acts.items()}
                    if weight == 0:
                        baseline_out, baseline_module = out, copy.deepcopy(module)
                for extra in (False, True) if weight == 0 else (False,):
                    r = measure(out, train_l, valid_l, new_l, left_out, extra_feature=extra)
                    results.append({"weight": weight, "fourth_feature": extra, "left_out": left_out[4:], **r})
                    print(results[-1], flush=True)
            for weight in head_weights:  # the trained model's head alone, with the same negatives
                negatives = torch.cat([neg[n] for n in sorted(neg) if n != left_out])
                out = head_only(baseline_module, acts, loaders["train"].dataset.labels, negatives, weight)
                r = measure(out, train_l, valid_l, new_l, left_out)
                results.append({"weight": weight, "head_only": True, "fourth_feature": False,
                                "left_out": left_out[4:], **r})
                print(results[-1], flush=True)
    rows = []
    variants = [(w, e, False) for w in weights for e in ((False, True) if w == 0 else (False,))]
    for weight, extra, head in variants + [(w, False, True) for w in head_weights]:
        rs = [r for r in results if r["weight"] == weight and r["fourth_feature"] == extra
              and r.get("head_only", False) == head]
        given, n = sum(r["left_out_given"] for r in rs), sum(r["left_out_n"] for r in rs)
        row = {"method": ("baseline (no negatives)" if weight == 0 else
                          f"outlier exposure{' on the head alone' if head else ''}, weight {weight}")
               + (" + landmark-vs-not 4th feature" if extra else ""),
               **{f"src:{r['left_out']}": f"{r['left_out_given']}/{r['left_out_n']}" for r in rs},
               "pooled": f"{given / n:.1%}",
               "new_given": " / ".join(f"{r['new_given']:.1%}" for r in rs),
               "tagged_right": " / ".join(f"{r['tagged_right']:.1%}" for r in rs),
               "top1": f"{np.mean([r['top1'] for r in rs]):.1%}",
               "enrol": " / ".join(f"{r['enrol_loo_top1']:.1%}" for r in rs), "runs": rs}
        rows.append(row)
    cols = [("method", "method")] + [(f"src:{s[4:]}", f"{s[4:]} left out: given one") for s in sorted(neg)]
    cols += [("pooled", "left-out sources pooled"), ("new_given", "new landmarks given one (per fold)"),
             ("tagged_right", "validation tagged right (per fold)"), ("top1", "top-1 (valid)"),
             ("enrol", "enrolled new landmarks top-1, LOO (per fold)")]
    table = format_table(rows, cols)
    table += f"\n\nLoad average at the start {load[0]:.2f}; {time.perf_counter() - started:.0f} s in all"
    save_results(args.name, "bench_outlier_exposure.py", argv, rows, table, load_average=list(load),
                 sources={k[4:]: len(v) for k, v in by_source.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
