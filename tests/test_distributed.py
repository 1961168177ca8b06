"""Distributed training under torchrun: two CPU processes with gloo on a tiny real data set.

The launches run tests/ddp_worker.py (test-only code: the product has no test hooks) through
``python -m torch.distributed.run``, as a user runs ``torchrun``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src import distributed as D
from src.data import get_data_loaders
from src.helpers import PROJECT_ROOT
from src.model import MyModel
from src.optimization import get_loss
from src.checkpoint import build_model_from_checkpoint, load_checkpoint
from src.train_cli import add_train_arguments, run_training
from src.train import evaluate

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
TINY = ["--arch", "scratch", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--widths", "8,16,16,16",
        "--depths", "1,1,1,1"]
RUN_FILES = {"best.pt", "last.pt", "history.csv", "history.json", "loss_curve.png", "test_metrics.json"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2`` on this machine, gloo on the CPU, restarts off."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "LANDMARK_DEVICE": "cpu",
           "LANDMARK_DIST_TIMEOUT": "60", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=0",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *argv]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _reports(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


# --------------------------------------------------------------------------------------------------------------
# Single process: everything is a no-op, nothing changes
# --------------------------------------------------------------------------------------------------------------

def test_without_torchrun_everything_is_one_process(tiny_dataset, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert D.init_distributed() is False and not D.is_distributed()
    assert (D.get_rank(), D.get_world_size(), D.is_main_process(), D.get_local_world_size()) == (0, 1, True, 1)
    t = torch.arange(3.0)
    assert D.all_reduce_sum(t) is t and D.all_true(True) and not D.all_true(False)
    assert D.on_main_process(lambda x: x + 1, 1) == 2 and D.broadcast_object("x") == "x"
    assert D.all_gather_object(5) == [5] and D.cpu_share(8) == 8
    model = MyModel(3, widths=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    assert D.wrap_ddp(model) is model
    D.barrier(), D.sync_buffers(model), D.cleanup()
    loaders = get_data_loaders(batch_size=4, num_workers=0, img_size=32, data_dir=tiny_dataset, seed=1)
    assert type(loaders["train"].sampler).__name__ == "RandomSampler"
    assert type(loaders["test"].sampler).__name__ == "SequentialSampler"
    with pytest.raises(ValueError, match="LANDMARK_DIST_TIMEOUT"):
        monkeypatch.setenv("LANDMARK_DIST_TIMEOUT", "soon")
        D._env_seconds(D.TIMEOUT_ENV, 600)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_sample_once_and_unshard_restores_the_order(n, world):
    shards = [list(D.ShardSampler(range(n), num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))  # no padding, no repeats
    assert [len(D.ShardSampler(range(n), world, r)) for r in range(world)] == [len(s) for s in shards]
    assert D.unshard(shards) == list(range(n))
    blocks = [list(D.block_range(n, r, world)) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n)) and max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert D.padded_size(n, world) % world == 0 and 0 <= D.padded_size(n, world) - n < world
    with pytest.raises(ValueError):
        D.ShardSampler(range(n), num_replicas=world, rank=world)


# --------------------------------------------------------------------------------------------------------------
# Two processes
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_steps_keep_ranks_identical_and_metrics_exact(tiny_dataset, tmp_path):
    """DDP through train_one_epoch: bit-identical weights on both ranks after every step (from different
    initial weights), sharded evaluation equal to one process over the whole split, and the feature cache
    extracted in shards, gathered in order, written once, reused; the head trains under DDP on it."""
    reports = tmp_path / "reports"
    reports.mkdir()
    run = torchrun(str(WORKER), "steps", str(reports), str(tiny_dataset))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rank0, rank1 = _reports(reports)
    assert rank0 == rank1 and rank0["steps"] == 6 and rank0["n_train"] == 24 and rank0["n_valid"] == 6
    assert len(rank0["cache_files"]) == 1 and rank0["cache_files"][0].endswith(".pt")  # no temporary files


@pytest.mark.slow
def test_a_dead_rank_fails_the_job_then_resume_finishes_it_from_rank_0_files(tiny_dataset, tmp_path):
    """Rank 1 dies in epoch 2 of 2: the job exits non-zero (no hang) and torchrun names rank 1; epoch 1 is
    saved. ``--resume`` under torchrun finishes the run, only rank 0 writes, and its validation and test
    metrics are exactly those of one process on the saved weights."""
    out = tmp_path / "out"
    train_args = [*TINY, "--data-dir", str(tiny_dataset), "--out", str(out), "--seed", "3", "--epochs", "2"]
    died = torchrun(str(WORKER), "die", str(tmp_path), "--", *train_args, timeout=120)
    output = died.stdout + died.stderr
    assert died.returncode != 0, output[-3000:]
    assert "ChildFailedError" in output and re.search(r"Root Cause.*?rank\s*:\s*1\b.*?exitcode\s*:\s*1\b", output,
                                                      re.S), output[-3000:]
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 1 and not (out / "test_metrics.json").exists()

    reports = tmp_path / "reports"
    reports.mkdir()
    run = torchrun(str(WORKER), "cli", str(reports), "--", *train_args, "--resume")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rank0, rank1 = _reports(reports)
    assert rank0["rc"] == rank1["rc"] == 0
    assert rank1["written"] == []  # only rank 0 writes files
    assert {Path(p).name for p in rank0["written"] if Path(p).parent == out} == RUN_FILES
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no temporary files left over
    assert run.stdout.count("Test accuracy:") == 1 and run.stdout.count("Epoch 2/2:") == 1  # one process prints
    assert "Resuming" in run.stdout and "Epoch 1/2:" not in run.stdout

    last = load_checkpoint(out / "last.pt")
    history = last["history"]
    assert [h["epoch"] for h in history] == [1, 2] and last["epoch"] == 2
    assert history[0] == saved["history"][0]  # epoch 1 kept, not redone
    assert len((out / "history.csv").read_text().splitlines()) == 3
    assert json.loads((out / "history.json").read_text()) == json.loads(json.dumps(history))

    # The epoch-2 validation metrics of 2 processes are exactly those of one process on the saved weights.
    loaders = get_data_loaders(batch_size=4, num_workers=0, img_size=32, data_dir=tiny_dataset, seed=3,
                               mean=last["mean"], std=last["std"])
    valid = evaluate(loaders["valid"], build_model_from_checkpoint(last), get_loss(last["args"]["label_smoothing"]))
    assert valid["loss"] == pytest.approx(history[-1]["valid_loss"], abs=1e-5)
    assert valid["accuracy"] == pytest.approx(history[-1]["valid_acc"], abs=1e-9)

    # The test metrics of 2 processes equal a single-process --test-only run on the same best.pt.
    two = json.loads((out / "test_metrics.json").read_text())
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    one = run_training(parser.parse_args([*train_args, "--test-only"]))
    assert one["n_test"] == two["n_test"] == 12  # every test photo once, none repeated
    assert one["test_loss"] == pytest.approx(two["test_loss"], abs=1e-5)
    assert one["test_acc"] == two["test_acc"] and one["test_top5"] == two["test_top5"]
