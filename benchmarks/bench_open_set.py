"""Open-set recognition on a mixed library: known landmarks, everyday photos from several sources, and landmarks
the model was not taught. Compares, in one run, the classifier (``--min-prob 0`` and the app's old 0.3), the
classifier calibrated the same way as the retrieval path, and retrieval in the landmark index calibrated three
ways: as before this change (one pooled threshold fitted on everyday + landmarks held out), leave-one-source-out
on every source (everyday, the three sources of everyday2, landmarks held out: the default), and on what a fresh
clone ships (``src/calibration_photos`` + landmarks held out). Per source and kind: photos without a known landmark
given one, on the measuring halves no calibration saw, and (from the calibration) with each source left out of the
fit. Then enrols the new landmarks without training and measures again.

    python benchmarks/bench_open_set.py --model checkpoints/transfer_exported.pt [--compare OTHER.pt ...]

``--compare``: other exported models (an ensemble, ...) measured on the same photos in the same run with the
default calibration (every source, 2 % pooled), before and after enrolling the new landmarks.

The model must have been exported with its index (``python -m src export`` does it; ``python -m src calibrate``
for an older file); the indexes compared are rebuilt here from its data set. Only the MEASURING halves of the
everyday folders are used to measure; the calibration halves made the thresholds. Writes
``benchmarks/results/bench_open_set.json``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SHARED_DATA, add_open_set_data_arguments, format_table, save_results

from src.calibrate import HELD_OUT_SOURCE, SHIPPED_NEGATIVES, build_index, source_names
from src.data import scan_split
from src.enroll import enroll_folder, read_locations
from src.index import index_path_for
from src.openset import PER_SOURCE, open_set_summary, split_negatives
from src.pipeline import decode_for_batch, iter_predictions
from src.recognizer import Recognizer



class WithoutEmbedding:
    """The same backend, seen as a plain classifier (what a model without embeddings gets)."""

    def __init__(self, backend):
        self.inner = backend
        self.class_names, self.resize_size, self.img_size = backend.class_names, backend.resize_size, backend.img_size
        self.arch, self.has_embedding, self.path = backend.arch, False, None

    def __call__(self, batch):
        return self.inner(batch)[0], None


def run_outputs(backend, paths):
    """Model outputs of every photo, once: ``[(probs [1, C], embedding [1, D] or None)]`` (None if unreadable)."""
    outputs = []
    for result in iter_predictions(backend, paths, desc="Photos"):
        if result.probs is None:
            outputs.append(None)
            continue
        emb = None if result.embedding is None else result.embedding.unsqueeze(0)
        outputs.append((result.probs.unsqueeze(0), emb))
    return outputs


def decide_all(recognizer, outputs, truth, min_prob=None):
    """Open-set summary of ``recognizer`` on precomputed outputs; ``truth``: class key or None."""
    predicted, confidences, kept = [], [], []
    for out, t in zip(outputs, truth):
        if out is None:
            continue
        record = recognizer.decide(out[0], out[1], [""], 1, min_prob)[0]
        predicted.append(record["top_k"][0]["class"])
        confidences.append(record["prob"])
        kept.append(t)
    threshold = recognizer.min_prob if min_prob is None else float(min_prob)
    return open_set_summary(predicted, confidences, kept, threshold), predicted, confidences, kept


def wrong_location_share(summary: dict, landmark_share: float = 0.1) -> float:
    """Of the locations written in a library where ``landmark_share`` of the photos show a known landmark, the
    share that is wrong (wrong landmark, or a photo without one)."""
    right = summary["known_tagged_right"] * landmark_share
    wrong = summary["known_tagged_wrong"] * landmark_share + summary["unknown_given_landmark"] * (1 - landmark_share)
    return wrong / (right + wrong) if right + wrong else 0.0


def row(name: str, summary: dict, extra: dict | None = None) -> dict:
    return {"method": name, "threshold": f"{summary['threshold']:.3f}", "top1": f"{summary['top1_known']:.1%}",
            "right": f"{summary['known_tagged_right']:.1%}", "wrong": f"{summary['known_tagged_wrong']:.1%}",
            "unknown_given": f"{summary['unknown_given_landmark']:.1%}", "gap": f"{summary['gap']:.3f}",
            "gap_withdrawn": f"{summary['gap_withdrawn']:.3f}",
            "auroc": f"{summary['auroc_known_vs_unknown']:.3f}",
            "wrong_of_written_1in10": f"{wrong_location_share(summary):.0%}", **(extra or {}), "raw": summary}


def promise_columns(calibration: dict) -> dict:
    """A calibration's leave-one-source-out rates and its promise, as table cells ("-" when it has none)."""
    held = calibration.get("held_out_false_rate") or {}
    promise = calibration.get("promise")
    return {"loso": ", ".join(f"{k} {v:.1%}" for k, v in held.items()) or "-",
            "promise": f"{promise:.1%}" if promise is not None else "-"}


def enrol_new(args, model_path, backend, index, library, outputs, known_truth, n_known, n_everyday) -> dict:
    """Enrol the new landmarks (no training) into a copy of the model with ``index``; decide the library again
    (known test photos, everyday measuring halves, new_landmarks/test); time the forward pass alone on the same
    photos."""
    with tempfile.TemporaryDirectory() as tmp:
        model_copy = Path(tmp) / Path(model_path).name
        shutil.copy(model_path, model_copy)
        index.save(index_path_for(model_copy))
        enrolled = Recognizer.load(model_copy)
        train_paths = [p for p, _ in scan_split(Path(args.new) / "train")]
        images = [decode_for_batch(p, backend.resize_size, backend.img_size) for p in train_paths]
        backend(torch.stack(images[:8]))  # warm-up: the first calls optimise the graph
        backend(torch.stack(images[:8]))
        started = time.perf_counter()
        for i in range(0, len(images), 8):
            backend(torch.stack(images[i:i + 8]))
        forward_seconds = time.perf_counter() - started
        started = time.perf_counter()
        added = enroll_folder(enrolled, args.new, "train", read_locations(args.locations), progress=False)
        enroll_seconds = time.perf_counter() - started
        enrolled = Recognizer.load(model_copy)  # as a user's next command would see it
        new_test = [(p, p.parent.name) for p, _ in scan_split(Path(args.new) / "test")]
        new_outputs = run_outputs(backend, [p for p, _ in new_test])
        after_truth = [t for _, t in library] + [t for _, t in new_test]
        summary, _, conf, _ = decide_all(enrolled, outputs + new_outputs, after_truth)
        given = np.array(conf) >= summary["threshold"]
        new_known = open_set_summary(*[list(x) for x in decide_all(enrolled, new_outputs,
                                                                   [t for _, t in new_test])[1:]],
                                     summary["threshold"])
        known_after, _, _, _ = decide_all(enrolled, outputs[:n_known], known_truth)
    return {"added": added, "train_paths": train_paths, "forward_seconds": forward_seconds,
            "enroll_seconds": enroll_seconds, "summary": summary, "neg_given": given[n_known:n_known + n_everyday],
            "new_known": new_known, "known_after": known_after}


def measuring_halves(folders) -> list[tuple[Path, str, str]]:
    """``(photo, source, kind)`` of each folder's measuring half (no calibration sees it); sources as
    ``python -m src calibrate`` names them (a folder, or one per ``repo`` of its sources.csv)."""
    out = []
    for folder in map(Path, folders):
        repos = source_names(folder)
        for path in split_negatives(folder)["measure"]:
            rel = path.relative_to(folder).as_posix()
            repo = repos.get(rel)
            out.append((path, f"{folder.name}/{repo}" if repo else folder.name, rel.split("/")[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_open_set_data_arguments(parser)
    parser.add_argument("--everyday2", default=str(SHARED_DATA / "everyday2"),
                        help="a second folder of photos without landmarks (sources.csv: one source per repo)")
    parser.add_argument("--locations", default=str(Path(__file__).parent / "data" / "new_landmarks_locations.json"))
    parser.add_argument("--name", default="bench_open_set")
    parser.add_argument("--compare", nargs="*", default=[],
                        help="other exported models (e.g. an ensemble) measured the same way with the default "
                             "calibration, on the same photos in the same run")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    load = os.getloadavg()

    recognizer = Recognizer.load(args.model)
    if recognizer.method != "retrieval":
        raise SystemExit(f"{args.model}: needs a model with embeddings and its landmark index")
    backend = recognizer.backend
    rate = 0.02
    folders = [args.negatives, args.everyday2]
    known = [(p, p.parent.name) for p, _ in scan_split(Path(args.data_dir) / "test")]
    measure = measuring_halves(folders)
    everyday = [(p, None) for p, _, _ in measure]
    new_all = [(p, None) for split in ("train", "test") for p, _ in scan_split(Path(args.new) / split)]
    library = known + everyday + new_all
    outputs = run_outputs(backend, [p for p, _ in library])  # the test photos: looked at once per run
    truth = [t for _, t in library]
    n_known, n_everyday = len(known), len(everyday)
    source_of = np.array([s for _, s, _ in measure])
    kind_of = np.array([k for _, _, k in measure])

    started = time.perf_counter()
    indexes = {"everyday": build_index(backend, args.data_dir, [args.negatives], max_false_rate=rate),
               "all": build_index(backend, args.data_dir, folders, max_false_rate=rate),
               "all_1pct": build_index(backend, args.data_dir, folders, max_false_rate=0.01),
               "per_source": build_index(backend, args.data_dir, folders, max_false_rate=rate, rule=PER_SOURCE),
               "shipped": build_index(backend, args.data_dir, [SHIPPED_NEGATIVES], max_false_rate=rate)}
    calibration_seconds = time.perf_counter() - started
    plain = Recognizer(WithoutEmbedding(backend))
    classifier_index = build_index(WithoutEmbedding(backend), args.data_dir, args.negatives, max_false_rate=rate)
    calibrated_classifier = Recognizer(WithoutEmbedding(backend), classifier_index)
    methods = [("classifier, --min-prob 0", plain, 0.0), ("classifier, 0.3 (the app before)", plain, 0.3),
               ("classifier, calibrated on everyday + held out", calibrated_classifier, None),
               ("retrieval, everyday + held out (before)", Recognizer(backend, indexes["everyday"]), None),
               ("retrieval, every source, 2 % pooled (default)", Recognizer(backend, indexes["all"]), None),
               ("retrieval, every source, 1 % pooled", Recognizer(backend, indexes["all_1pct"]), None),
               ("retrieval, every source, each within 2 %", Recognizer(backend, indexes["per_source"]), None),
               ("retrieval, fresh clone: shipped photos + held out", Recognizer(backend, indexes["shipped"]), None)]
    sources = sorted(set(source_of))
    kinds = sorted(set(kind_of))

    def per_source(neg_given):
        return {**{f"src:{s}": f"{neg_given[source_of == s].mean():.1%}" for s in sources},
                "everyday_given": f"{neg_given.mean():.1%}"}
    rows, kind_rows = [], []
    for name, rec, min_prob in methods:
        summary, predicted, conf, kept = decide_all(rec, outputs, truth, min_prob)
        given = np.array(conf) >= summary["threshold"]
        neg_given = given[n_known:n_known + n_everyday]
        rows.append(row(name, summary, per_source(neg_given) | promise_columns(rec.calibration) | {
            "new_given": f"{given[n_known + n_everyday:].mean():.1%}"}))
        kind_rows.append({"method": name, **{k: f"{neg_given[kind_of == k].mean():.1%} ({(kind_of == k).sum()})"
                                             for k in kinds}})
    default = indexes["all"]

    enrol = enrol_new(args, args.model, backend, default, known + everyday, outputs[:n_known + n_everyday],
                      truth[:n_known], n_known, n_everyday)
    added, train_paths, new_known, known_after = enrol["added"], enrol["train_paths"], enrol["new_known"], \
        enrol["known_after"]
    enroll_seconds, forward_seconds = enrol["enroll_seconds"], enrol["forward_seconds"]
    rows.append(row("default, after enrolling 5 new landmarks", enrol["summary"], per_source(enrol["neg_given"]) | {
        "new_given": f"top-1 {new_known['top1_known']:.1%}, right {new_known['known_tagged_right']:.1%}"}))
    compared = []
    for other in args.compare:  # another model (an ensemble, ...): its default calibration, on the same photos
        other_backend = Recognizer.load(other).backend
        other_outputs = run_outputs(other_backend, [p for p, _ in library])
        other_index = build_index(other_backend, args.data_dir, folders, max_false_rate=rate)
        summary, _, conf, _ = decide_all(Recognizer(other_backend, other_index), other_outputs, truth)
        given = np.array(conf) >= summary["threshold"]
        label = f"{Path(other).parent.name}/{Path(other).name}: every source, 2 % pooled"
        rows.append(row(label, summary, per_source(given[n_known:n_known + n_everyday]) |
                        promise_columns(other_index.calibration) |
                        {"new_given": f"{given[n_known + n_everyday:].mean():.1%}"}))
        other_enrol = enrol_new(args, other, other_backend, other_index, known + everyday,
                                other_outputs[:n_known + n_everyday], truth[:n_known], n_known, n_everyday)
        rows.append(row(f"{label}, after enrolling", other_enrol["summary"], per_source(other_enrol["neg_given"]) | {
            "new_given": f"top-1 {other_enrol['new_known']['top1_known']:.1%}, "
                         f"right {other_enrol['new_known']['known_tagged_right']:.1%}"}))
        compared.append({"model": str(other), "forward_vs_default": other_enrol["forward_seconds"] / forward_seconds,
                         "new_test_top1": other_enrol["new_known"]["top1_known"],
                         "landmarks13_top1_after": other_enrol["known_after"]["top1_known"]})
    default_row = rows[4]["raw"]
    enrolment = {"landmarks": len(added), "photos": len(train_paths), "enroll_seconds": enroll_seconds,
                 "forward_only_seconds": forward_seconds,
                 "enroll_vs_forward": enroll_seconds / forward_seconds if forward_seconds else None,
                 "new_test_top1": new_known["top1_known"], "new_test_tagged_right": new_known["known_tagged_right"],
                 "landmarks13_top1_before": default_row["top1_known"],
                 "landmarks13_top1_after": known_after["top1_known"]}
    columns = [("method", "method"), ("threshold", "threshold"), ("top1", "top-1 known"),
               ("right", "known tagged right"), ("wrong", "known tagged wrong"),
               ("unknown_given", "no-landmark photos given one"), ("everyday_given", "everyday (all 4) given one")]
    columns += [(f"src:{s}", s) for s in sources]
    columns += [("new_given", "new landmarks given one"), ("gap", "GAP"), ("auroc", "AUROC"),
                ("wrong_of_written_1in10", "wrong of written (1 in 10)"),
                ("loso", "left out of the fit: given one"), ("promise", "promise")]
    table = format_table(rows, columns)
    table += "\n\nPer kind (measuring halves of all everyday sources): share given a landmark (photos)\n\n"
    table += format_table(kind_rows, [("method", "method")] + [(k, k) for k in kinds])
    table += (f"\n\nEnrolment: {len(added)} landmarks, {len(train_paths)} photos in {enroll_seconds:.1f} s "
              f"({enroll_seconds / len(train_paths) * 1000:.0f} ms a photo; the forward pass alone "
              f"{forward_seconds / len(train_paths) * 1000:.0f} ms, ratio {enrolment['enroll_vs_forward']:.2f}); "
              f"new_landmarks/test top-1 {new_known['top1_known']:.1%}; landmarks13 test top-1 "
              f"{enrolment['landmarks13_top1_before']:.1%} -> {enrolment['landmarks13_top1_after']:.1%}")
    for c in compared:
        table += (f"\n{c['model']}: forward pass {c['forward_vs_default']:.2f}x the default model's time; "
                  f"new_landmarks/test top-1 after enrolling {c['new_test_top1']:.1%}")
    table += f"\nLoad average at the start {load[0]:.2f}; five calibrations in {calibration_seconds:.0f} s"
    save_results(args.name, "bench_open_set.py", argv, rows, table, enrolment=enrolment, kinds=kind_rows,
                 compared=compared,
                 library={"known": n_known, "everyday_measure_halves": {s: int((source_of == s).sum())
                                                                        for s in sources},
                          "new_landmarks": len(new_all)}, load_average=list(load),
                 calibrations={k: {key: v.calibration.get(key) for key in (
                     "threshold", "threshold_source", "sources", "held_out_false_rate", "promise",
                     "measured_on_calibration")} for k, v in indexes.items()},
                 held_out_source=HELD_OUT_SOURCE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
