"""Backends: the exported TorchScript file and the ONNX file exported beside it answer alike, for every exported
kind (scratch CNN, transfer model with its embedding, ensemble); choosing between them never takes a stale file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bad_inputs import GOOD, write_corpus
from src.backends import (DEFAULT_BACKEND, ExportedModelError, OnnxBackend, TorchScriptBackend, choose_backend_file,
                          load_backend)
from src.export import export_onnx, export_torchscript
from src.model import create_model
from src.pipeline import decode_for_batch, iter_predictions
from src.helpers import file_sha256
from src.predictor import EmbeddingPredictor, Ensemble, make_predictor
from src.transfer import TransferModel

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

CLASSES = ["00.Landmark_A", "01.Landmark_B", "02.Landmark_C"]
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]


def tiny_transfer(seed: int = 0) -> TransferModel:
    """A real :class:`TransferModel` (the class whose ONNX export used to fail) around a small backbone."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        backbone[1].running_mean.uniform_(-0.2, 0.2)
        backbone[1].running_var.uniform_(0.5, 1.5)
    return TransferModel(backbone, 12, len(CLASSES), MEAN, STD, "tiny").eval()


def tiny_scratch(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("scratch", len(CLASSES), dropout=0.0, widths=[8, 8, 16, 16], depths=[1, 1, 1, 1]).eval()


KINDS = {
    "scratch": lambda: tiny_scratch(),
    "transfer": lambda: tiny_transfer(),
    "ensemble": lambda: Ensemble([tiny_transfer(0), tiny_transfer(1)]),
    "scratch_ensemble": lambda: Ensemble([tiny_scratch(0), tiny_scratch(1)]),
}
WITH_EMBEDDING = {"transfer": 12, "ensemble": 24}


def export_pair(folder, net: nn.Module, arch: str):
    folder.mkdir(parents=True, exist_ok=True)
    predictor = make_predictor(net, CLASSES, MEAN, STD, img_size=32, arch=arch)
    pt = folder / "model.pt"
    export_torchscript(predictor, pt)
    report = export_onnx(predictor, pt.with_suffix(".onnx"), metadata={"torchscript_sha256": file_sha256(pt)})
    return predictor, pt, report


def square_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """What tag and serve feed a backend: uint8 photos already at the resize size."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_onnx_file_answers_like_the_torchscript_file(tmp_path, kind):
    predictor, pt, report = export_pair(tmp_path / kind, KINDS[kind](), kind)
    assert report["max_abs_diff"] <= 1e-5
    ts, ox = load_backend(pt, "torchscript"), load_backend(pt, "onnx")
    assert isinstance(ts, TorchScriptBackend) and isinstance(ox, OnnxBackend)
    assert (ox.class_names, ox.resize_size, ox.img_size, ox.arch) == (ts.class_names, ts.resize_size, ts.img_size,
                                                                      kind)
    assert ox.has_embedding == ts.has_embedding == (kind in WITH_EMBEDDING)
    batch = square_batch(5, ts.resize_size)
    (p_ts, e_ts), (p_ox, e_ox) = ts(batch), ox(batch)
    assert (p_ox - p_ts).abs().max() <= 1e-5
    if kind in WITH_EMBEDDING:
        assert isinstance(predictor, EmbeddingPredictor)
        assert e_ox.shape == (5, WITH_EMBEDDING[kind]) and (e_ox - e_ts).abs().max() <= 1e-5
        assert torch.allclose(e_ox.norm(dim=1), torch.ones(5), atol=1e-5)  # L2-normalised
    else:
        assert e_ox is None and e_ts is None
    meta = {e.key: e.value for e in onnx.load(str(pt.with_suffix(".onnx"))).metadata_props}
    assert meta["class_names"].split("\n") == CLASSES and meta["arch"] == kind
    assert json.loads(meta["mean"]) == pytest.approx(MEAN) and json.loads(meta["std"]) == pytest.approx(STD)
    assert (meta["img_size"], meta["resize_size"]) == ("32", str(ts.resize_size))
    assert meta["format"].startswith("landmark-tagger-predictor") and meta["torchscript_sha256"] == file_sha256(pt)
    assert ("embedding_dim" in meta) == (kind in WITH_EMBEDDING)


def test_an_ensembles_embedding_is_its_members_side_by_side(tmp_path):
    """Each member's normalised features, divided by sqrt(members): cosine similarities are the mean of the
    members', and the probabilities the mean of theirs."""
    members = [tiny_transfer(0), tiny_transfer(1), tiny_transfer(2)]
    predictor, pt, _ = export_pair(tmp_path, Ensemble(members), "ensemble")
    batch = square_batch(4, predictor.resize_size, seed=3)
    singles = [make_predictor(m, CLASSES, MEAN, STD, img_size=32) for m in members]
    with torch.no_grad():
        outs = [p.probs_and_embedding(batch) for p in singles]
    probs, embedding = TorchScriptBackend.load(pt)(batch)
    assert (probs - torch.stack([p for p, _ in outs]).mean(0)).abs().max() <= 1e-5
    expected = torch.cat([e for _, e in outs], dim=1) / 3 ** 0.5
    assert (embedding - expected).abs().max() <= 1e-5
    sims = embedding @ embedding.T
    assert (sims - torch.stack([e @ e.T for _, e in outs]).mean(0)).abs().max() <= 1e-5


def test_onnx_export_of_a_transfer_model_accepts_any_photo_size(tmp_path):
    predictor, pt, _ = export_pair(tmp_path, tiny_transfer(), "transfer")
    ox = OnnxBackend(pt.with_suffix(".onnx"))
    for shape in [(1, 3, 123, 45), (2, 3, 40, 40), (1, 3, 20, 31)]:  # resampled inside the graph
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        probs, embedding = ox(x)
        with torch.no_grad():
            expected_probs, expected_embedding = predictor.probs_and_embedding(x)
        assert (probs - expected_probs).abs().max() <= 1e-3 and (embedding - expected_embedding).abs().max() <= 1e-3


def test_both_backends_give_the_same_predictions_on_real_files(tmp_path):
    _, pt, _ = export_pair(tmp_path / "m", tiny_transfer(), "transfer")
    corpus = write_corpus(tmp_path / "photos", fs_only=False)
    paths = sorted(tmp_path / "photos" / name for name in corpus)
    out = {}
    for backend in ("torchscript", "onnx"):
        out[backend] = list(iter_predictions(load_backend(pt, backend), paths, batch_size=4, progress=False))
    good = {s.name for s in GOOD}
    for a, b in zip(out["torchscript"], out["onnx"]):
        assert (a.error is None) == (b.error is None) == (a.path.name in good)
        if a.error is None:
            assert (a.probs - b.probs).abs().max() <= 1e-5 and (a.embedding - b.embedding).abs().max() <= 1e-5
        else:
            assert a.error == b.error


def test_parallel_onnx_runners_give_the_same_results_in_order(tmp_path):
    from src.backends import parallel_runners

    _, pt, _ = export_pair(tmp_path / "m", tiny_transfer(), "transfer")
    corpus = write_corpus(tmp_path / "photos", fs_only=False)
    paths = sorted(tmp_path / "photos" / name for name in corpus) * 3  # bad files among good ones, many batches
    reference = TorchScriptBackend.load(pt)
    expected = list(iter_predictions(reference, paths, batch_size=2, progress=False))
    onnx = load_backend(pt, "onnx")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert len(parallel_runners(onnx)) == 2  # what iter_predictions takes on a CPU of 2+ threads
        got = list(iter_predictions(onnx, paths, batch_size=2, progress=False))
    finally:
        torch.set_num_threads(threads)
    assert [r.path for r in got] == paths
    for a, b in zip(expected, got):
        assert a.error == b.error
        if a.error is None:
            assert (a.probs - b.probs).abs().max() <= 1e-5 and (a.embedding - b.embedding).abs().max() <= 1e-5


def test_auto_takes_the_onnx_file_only_when_it_was_exported_with_the_model(tmp_path):
    _, pt, _ = export_pair(tmp_path, tiny_transfer(), "transfer")
    onnx_file = pt.with_suffix(".onnx")
    assert choose_backend_file(pt, "auto") == (DEFAULT_BACKEND, onnx_file if DEFAULT_BACKEND == "onnx" else pt)
    assert choose_backend_file(onnx_file, "auto") == ("onnx", onnx_file)
    assert choose_backend_file(pt, "torchscript") == ("torchscript", pt)
    # the .pt exported again from another model: the .onnx beside it is stale
    export_torchscript(make_predictor(tiny_transfer(seed=5), CLASSES, MEAN, STD, img_size=32, arch="t"), pt)
    assert choose_backend_file(pt, "auto") == ("torchscript", pt)
    with pytest.raises(ExportedModelError, match="was not exported together with"):
        load_backend(pt, "onnx")
    onnx_file.unlink()
    assert choose_backend_file(pt, "auto") == ("torchscript", pt)
    with pytest.raises(ExportedModelError, match="no such file"):
        load_backend(pt, "onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(pt, "tensorflow")


def test_bad_onnx_files_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ExportedModelError) as err:
        load_backend(garbage)
    assert str(err.value).startswith(f"{garbage}: not a usable ONNX file") and "\n" not in str(err.value)
    # a valid ONNX graph that is not one of ours
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(ExportedModelError, match="not an exported landmark predictor"):
        load_backend(foreign)
    with pytest.raises(ExportedModelError, match="no such file"):
        OnnxBackend(tmp_path / "missing.onnx")


def test_onnx_backend_takes_decoded_photos_like_tag_does(tmp_path):
    _, pt, _ = export_pair(tmp_path, tiny_scratch(), "scratch")
    ts, ox = load_backend(pt, "torchscript"), load_backend(pt, "onnx")
    sample = GOOD[0]
    image = decode_for_batch(sample.make(), ts.resize_size, ts.img_size, name=sample.name)
    assert np.allclose(ox(image[None])[0].numpy(), ts(image[None])[0].numpy(), atol=1e-5)


def _scratch_checkpoint(folder) -> str:
    kwargs = {"dropout": 0.0, "widths": [8, 8, 16, 16], "depths": [1, 1, 1, 1]}
    model = tiny_scratch()
    ckpt = {"format": "landmark-tagger/1", "arch": "scratch", "model_kwargs": kwargs, "model": model.state_dict(),
            "class_names": CLASSES, "mean": MEAN, "std": STD, "img_size": 32, "epoch": 1, "history": [], "args": {},
            "best_valid_loss": 1.0}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "best.pt")
    return str(folder / "best.pt")


def test_export_writes_the_onnx_file_by_default_and_auto_uses_it(tmp_path, capsys):
    from src.__main__ import main as cli

    ckpt = _scratch_checkpoint(tmp_path / "run")
    out = tmp_path / "default" / "model.pt"
    assert cli(["export", "--checkpoint", ckpt, "--out", str(out), "--no-index"]) == 0
    assert f"Exported {out.with_suffix('.onnx')}" in capsys.readouterr().out
    assert choose_backend_file(out) == (DEFAULT_BACKEND, out.with_suffix(".onnx") if DEFAULT_BACKEND == "onnx"
                                        else out)
    only = tmp_path / "ts_only" / "model.pt"
    assert cli(["export", "--checkpoint", ckpt, "--out", str(only), "--no-index", "--no-onnx"]) == 0
    assert not only.with_suffix(".onnx").exists() and choose_backend_file(only) == ("torchscript", only)
