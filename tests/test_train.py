"""The training engine: checkpoints, history, resume, a SIGKILL in the middle of training, and the CLI."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.data import get_data_loaders
from src.helpers import PROJECT_ROOT, seed_everything
from src.model import MyModel
from src.optimization import get_loss, get_optimizer, get_scheduler
from src.checkpoint import CHECKPOINT_FORMAT, CheckpointError, build_model_from_checkpoint, load_checkpoint
from src.train_cli import ARCH_DEFAULTS, add_train_arguments, run_training
from src.train import one_epoch_test, optimize, run_files

SMALL = {"widths": [8, 16, 32, 32], "depths": [1, 1, 1, 1], "dropout": 0.2}


def _loaders(root):
    return get_data_loaders(batch_size=8, num_workers=0, img_size=32, data_dir=root, seed=1)


def _setup(loaders, epochs, seed=0):
    seed_everything(seed)
    model = MyModel(3, **SMALL)
    optimizer = get_optimizer(model, "adamw", learning_rate=3e-3, weight_decay=0.01)
    scheduler = get_scheduler("onecycle", optimizer, epochs, len(loaders["train"]))
    return model, optimizer, scheduler


def _train(loaders, out, epochs, stop_after=None, resume=False, seed=0):
    model, optimizer, scheduler = _setup(loaders, epochs, seed)
    history = optimize(loaders, model, optimizer, get_loss(0.1), stop_after or epochs, out / "best.pt",
                       scheduler=scheduler, resume=resume, seed=7, metadata={"args": {"note": Path("x")}})
    return model, history


def test_optimize_writes_loadable_checkpoints_history_and_plot(tiny_dataset, tmp_path):
    loaders = _loaders(tiny_dataset)
    model, history = _train(loaders, tmp_path / "run", epochs=3)
    files = run_files(tmp_path / "run" / "best.pt")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for key in ("best", "last", "history_csv", "history_json", "plot"):
        assert files[key].is_file(), key
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = files["history_csv"].read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,train_acc,valid_loss,valid_acc") and len(csv_lines) == 4
    assert json.loads(files["history_json"].read_text()) == json.loads(json.dumps(history))
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic writes leave no temporary files

    last = torch.load(files["last"], map_location="cpu", weights_only=True)  # plain types only
    assert last["format"] == CHECKPOINT_FORMAT and last["epoch"] == 3 and last["arch"] == "scratch"
    assert last["class_names"] == loaders["train"].dataset.class_names
    assert last["mean"] == loaders["train"].dataset.mean and last["img_size"] == 32
    assert last["model_kwargs"] == SMALL and last["args"] == {"note": "x"}
    assert {"optimizer", "scheduler", "rng"} <= set(last)
    best = load_checkpoint(files["best"])
    assert best["best_valid_loss"] == pytest.approx(min(h["valid_loss"] for h in history))
    assert best["epoch"] == min(history, key=lambda h: h["valid_loss"])["epoch"]

    # the best checkpoint rebuilds the network by itself and gives the same test results
    rebuilt = build_model_from_checkpoint(best)
    model.load_state_dict(best["model"])
    a = one_epoch_test(loaders["test"], model.eval(), get_loss(), topk=2, verbose=False)
    b = one_epoch_test(loaders["test"], rebuilt, get_loss(), topk=2, verbose=False, return_predictions=True)
    assert a["loss"] == pytest.approx(b["loss"]) and a["accuracy"] == b["accuracy"]
    assert b["count"] == 12 and len(b["predictions"]) == 12 and b["topk_accuracy"] >= b["accuracy"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    loaders = _loaders(tiny_dataset)
    whole, whole_history = _train(loaders, tmp_path / "whole", epochs=3)
    _train(loaders, tmp_path / "cut", epochs=3, stop_after=2)  # stopped after epoch 2 of 3
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    resumed, resumed_history = _train(loaders, tmp_path / "cut", epochs=3, resume=True, seed=123)
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3]
    for a, b in zip(whole_history, resumed_history):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"])
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_optimize_trains_a_head_on_feature_vectors_and_saves_the_whole_model(tmp_path):
    """The transfer path: a loader of (features, label), only the head trains, the full model is saved."""
    torch.manual_seed(0)
    feats = torch.randn(48, 16)
    labels = (feats[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(feats, labels), batch_size=8, shuffle=True)
    full = nn.Sequential(nn.Linear(4, 4), nn.Linear(16, 2))
    head = full[1]
    frozen_before = full[0].weight.detach().clone()
    optimizer = get_optimizer(head, "adam", learning_rate=0.05)
    history = optimize({"train": loader, "valid": loader}, head, optimizer, get_loss(), 4, tmp_path / "best.pt",
                       checkpoint_model=full, channels_last=True, amp=True,
                       metadata={"arch": "resnet18", "class_names": ["a", "b"], "mean": [0.5] * 3,
                                 "std": [0.2] * 3, "img_size": 224})
    assert history[-1]["valid_acc"] > 0.8
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert set(ckpt["model"]) == set(full.state_dict())
    assert torch.equal(ckpt["model"]["0.weight"], frozen_before)
    assert not torch.equal(ckpt["model"]["1.weight"], optimizer.param_groups[0]["params"][0].detach() * 0)


def _one_line_error(path, match):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and match in message, message


def test_load_checkpoint_rejects_missing_corrupt_and_foreign_files(tiny_dataset, tmp_path):
    _one_line_error(tmp_path / "nothing.pt", "no such checkpoint")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    _one_line_error(garbage, "not a readable checkpoint")

    loaders = _loaders(tiny_dataset)
    _train(loaders, tmp_path / "run", epochs=1)
    real = (tmp_path / "run" / "last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(real[: len(real) // 2])
    _one_line_error(truncated, "not a readable checkpoint")

    bare = tmp_path / "bare.pt"
    torch.save(MyModel(3, **SMALL).state_dict(), bare)
    _one_line_error(bare, "bare state_dict")
    code = tmp_path / "code.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "obj": argparse.Namespace(a=1)}, code)  # not weights_only-safe
    _one_line_error(code, "not a readable checkpoint")
    partial = tmp_path / "partial.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "scratch"}, partial)
    _one_line_error(partial, "lacks")


def test_build_model_from_checkpoint_reports_a_class_count_mismatch(tiny_dataset, tmp_path):
    loaders = _loaders(tiny_dataset)
    _train(loaders, tmp_path / "run", epochs=1)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    ckpt["class_names"] = ckpt["class_names"] + ["03.Extra", "04.Extra"]
    with pytest.raises(CheckpointError, match="5 classes"):
        build_model_from_checkpoint(ckpt)


def _cli_args(*argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_training_trains_tests_and_test_only_reevaluates(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--data-dir", str(tiny_dataset), "--img-size", "32", "--batch-size", "8", "--workers", "0",
              "--widths", "8,16,32,32", "--depths", "1,1,1,1", "--out", str(out)]
    result = run_training(_cli_args("--epochs", "2", *common))
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "history.csv", "loss_curve.png",
                                               "test_metrics.json"}
    assert "Test accuracy:" in capsys.readouterr().out
    assert result["n_test"] == 12 and 0 <= result["test_acc"] <= 1
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["model_kwargs"]["widths"] == [8, 16, 32, 32] and ckpt["args"]["epochs"] == 2
    assert ckpt["args"]["lr"] == ARCH_DEFAULTS["scratch"]["lr"]  # arguments not given take the recipe's defaults
    again = run_training(_cli_args("--test-only", "--out", str(out), "--data-dir", str(tiny_dataset),
                                   "--workers", "0"))  # the run's own img size and widths come from best.pt
    assert again["test_acc"] == result["test_acc"] and again["test_loss"] == pytest.approx(result["test_loss"])
    mirrored = run_training(_cli_args("--test-only", "--tta", *common))
    assert mirrored["tta"] and mirrored["n_test"] == 12
    assert len(load_checkpoint(out / "last.pt")["history"]) == 2  # --test-only trained nothing


def test_resume_refuses_to_extend_a_finished_run_and_reports_ignored_arguments(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--data-dir", str(tiny_dataset), "--img-size", "32", "--batch-size", "8", "--workers", "0",
              "--widths", "8,16,32,32", "--depths", "1,1,1,1", "--out", str(out)]
    run_training(_cli_args("--epochs", "2", *common))
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    # more epochs for a finished run: one clear error (a one-cycle schedule cannot be stretched), nothing touched
    with pytest.raises(CheckpointError, match=r"last\.pt: this run already finished its 2 epochs and --resume "
                                              r"cannot extend it .* train 5 epochs in a new run"):
        run_training(_cli_args("--resume", "--epochs", "5", *common))
    assert (out / "last.pt").read_bytes() == before
    # another argument that contradicts the run is reported, not silently dropped; the run's own value is used
    again = run_training(_cli_args("--resume", "--lr", "0.5", *common))
    err = capsys.readouterr().err
    assert "Ignoring --lr 0.5 (the run's: 0.004): --resume continues the run with its saved arguments" in err
    assert again["n_test"] == 12 and load_checkpoint(out / "last.pt")["args"]["lr"] == 0.004
    # the same arguments as the run: nothing to report
    run_training(_cli_args("--resume", "--epochs", "2", *common))
    assert "Ignoring" not in capsys.readouterr().err


def test_split_seed_fixes_the_validation_photos_whatever_the_seed(tiny_dataset, tmp_path, capsys):
    """Ensemble members (one --split-seed, other --seed) hold out the same photos, and their checkpoints say which
    split they trained on, so that export calibrates the ensemble on photos no member saw."""
    from src.checkpoint import saved_split

    common = ["--epochs", "1", "--data-dir", str(tiny_dataset), "--img-size", "32", "--batch-size", "8",
              "--workers", "0", "--widths", "8,16,32,32", "--depths", "1,1,1,1"]
    seen = {}
    for seed, split in (("1", "7"), ("2", "7"), ("7", None)):
        out = tmp_path / f"seed{seed}"
        run_training(_cli_args(*common, "--seed", seed, *(["--split-seed", split] if split else []),
                               "--out", str(out)))
        seen[seed] = saved_split(load_checkpoint(out / "best.pt"))
        assert load_checkpoint(out / "best.pt")["args"]["seed"] == int(seed)
    assert seen == {"1": (0.2, 7), "2": (0.2, 7), "7": (0.2, 7)}


def test_valid_size_zero_trains_on_every_photo_and_keeps_the_last_epoch(tiny_dataset, tmp_path, capsys):
    """A final refit (``--valid-size 0``): nothing to validate on, so best.pt is the last epoch, not the first."""
    out = tmp_path / "refit"
    result = run_training(_cli_args("--epochs", "3", "--valid-size", "0", "--data-dir", str(tiny_dataset),
                                    "--img-size", "32", "--batch-size", "8", "--workers", "0", "--widths",
                                    "8,16,32,32", "--depths", "1,1,1,1", "--out", str(out)))
    assert "no validation set" in capsys.readouterr().out
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best["epoch"] == last["epoch"] == 3 and result["best_epoch"] == 3
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    history = json.loads((out / "history.json").read_text())
    assert [h["valid_loss"] for h in history] == [None] * 3 and all(h["best"] for h in history)
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["n_test"] == 12


@pytest.mark.slow
def test_sigkill_during_training_leaves_loadable_checkpoints_and_resume_finishes(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    epochs = 15
    cmd = [sys.executable, "-m", "src", "train", "--arch", "scratch", "--data-dir", str(tiny_dataset),
           "--epochs", str(epochs), "--img-size", "32", "--batch-size", "4", "--workers", "0",
           "--widths", "8,16,16,16", "--depths", "1,1,1,1", "--out", str(out)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.02)
        time.sleep(0.3)  # into the next epoch: training, or writing the next checkpoint
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    done = last["epoch"]
    # optimize() writes best.pt before last.pt, so a kill between the two leaves best.pt one epoch ahead of
    # last.pt (resume redoes that epoch and rewrites best.pt if it is still the best); never further ahead.
    assert 1 <= done < epochs and best["epoch"] <= done + 1
    assert [h["epoch"] for h in last["history"]] == list(range(1, done + 1))

    # --resume with no other arguments takes the run's own (saved) arguments and finishes it
    resumed = subprocess.run([sys.executable, "-m", "src", "train", "--resume", "--data-dir", str(tiny_dataset),
                              "--workers", "0", "--out", str(out)], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Test accuracy:" in resumed.stdout
    final = load_checkpoint(out / "last.pt")
    assert final["epoch"] == epochs
    assert [h["epoch"] for h in final["history"]] == list(range(1, epochs + 1))
    assert final["history"][:done] == last["history"]  # what was done before the kill is kept, not redone
    assert final["model_kwargs"]["widths"] == [8, 16, 16, 16]
