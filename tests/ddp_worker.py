"""Run under ``python -m torch.distributed.run`` by tests/test_distributed.py (never collected by pytest).

    ddp_worker.py cli REPORT_DIR -- TRAIN ARGS   ``python -m src train ARGS``, recording which files each rank
                                                 writes (every write of ours ends in an atomic rename)
    ddp_worker.py die REPORT_DIR -- TRAIN ARGS   the same, but rank 1 dies (os._exit) in epoch 2
    ddp_worker.py steps REPORT_DIR DATA_DIR      DDP steps, evaluation and the feature cache, checked in place

Each rank writes REPORT_DIR/rank{R}.json; an assertion that fails makes the rank, and so the job, fail.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src import distributed as D  # noqa: E402
from src.data import get_data_loaders, load_landmark_data, make_loader  # noqa: E402
from src.data_config import resize_size_for  # noqa: E402
from src.helpers import seed_everything  # noqa: E402
from src.model import MyModel  # noqa: E402
from src.optimization import get_loss, get_optimizer  # noqa: E402
from src.train import evaluate, train_one_epoch  # noqa: E402
from src.feature_cache import compute_feature_cache, extract_features, feature_transforms, \
    get_feature_loaders  # noqa: E402
from src.transfer import TransferModel  # noqa: E402

RANK = int(os.environ["RANK"])
SMALL = {"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "dropout": 0.2}


def report(folder: str, **facts) -> None:
    Path(folder, f"rank{RANK}.json").write_text(json.dumps(facts))


def record_renames() -> list[str]:
    """Every ``os.replace`` target of this process: how src.helpers' atomic writes land."""
    written: list[str] = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        written.append(os.fspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    return written


def run_cli(folder: str, argv: list[str]) -> int:
    from src.__main__ import main  # noqa: PLC0415

    written = record_renames()
    rc = main(["train", *argv])
    report(folder, rc=rc, written=written)
    return rc


def die_in_epoch_2(argv: list[str]) -> int:
    """Rank 1 dies without a word after its first step of epoch 2: rank 0 has saved epoch 1 by then (that step
    needed rank 0's gradients) and is waiting on rank 1 in the next one."""
    import src.train as train  # noqa: PLC0415

    real_seed_epoch, real_prepare, state = train._seed_epoch, train._prepare_batch, {"epoch": 0, "batches": 0}

    def seed_epoch(seed, epoch, loaders):
        state.update(epoch=epoch, batches=0)
        return real_seed_epoch(seed, epoch, loaders)

    def prepare(*args, **kwargs):
        state["batches"] += 1
        if RANK == 1 and state["epoch"] == 2 and state["batches"] == 2:
            os._exit(1)
        return real_prepare(*args, **kwargs)

    train._seed_epoch, train._prepare_batch = seed_epoch, prepare
    from src.__main__ import main  # noqa: PLC0415

    return main(["train", *argv])


def checksum(module: nn.Module) -> list[float]:
    return [float(p.detach().double().sum()) for p in module.parameters()] + \
        [float(p.detach().double().abs().sum()) for p in module.parameters()]


def same_everywhere(values) -> bool:
    gathered = D.all_gather_object(values)
    return all(g == gathered[0] for g in gathered)


def run_steps(folder: str, data_dir: str) -> int:
    assert D.init_distributed() and D.get_world_size() == 2 and dist_backend() == "gloo"
    with D.local_main_process_first():
        data = load_landmark_data(data_dir, seed=1)
    mean, std = [0.5] * 3, [0.25] * 3
    loaders = get_data_loaders(batch_size=4, num_workers=0, img_size=32, mean=mean, std=std, seed=1, data=data)
    assert type(loaders["train"].sampler).__name__ == "DistributedSampler"
    assert isinstance(loaders["valid"].sampler, D.ShardSampler) and isinstance(loaders["test"].sampler, D.ShardSampler)

    # DDP steps through the engine's own train_one_epoch, one batch at a time: after every step both ranks
    # hold bit-identical weights (each saw different photos).
    seed_everything(RANK)  # different initial weights per rank on purpose: DDP must make them rank 0's
    model = MyModel(3, **SMALL)
    ddp = D.wrap_ddp(model, "cpu")
    assert isinstance(ddp, nn.parallel.DistributedDataParallel) and same_everywhere(checksum(model))
    optimizer = get_optimizer(model, "adamw", learning_rate=0.01, weight_decay=0.01)
    loss = get_loss(0.1)
    steps, seen = 0, []
    for epoch in (1, 2):
        loaders["train"].sampler.set_epoch(epoch)
        for inputs, targets in loaders["train"]:
            seen.append(targets.tolist())
            metrics = train_one_epoch([(inputs, targets)], ddp, optimizer, loss)
            steps += 1
            assert metrics["count"] == 2 * len(targets), metrics  # the sums came from both ranks
            assert same_everywhere(checksum(model)), f"weights differ across ranks after step {steps}"
    assert not same_everywhere(seen), "both ranks trained on the same photos"
    n_train = len(loaders["train"].dataset)
    epoch_metrics = train_one_epoch(loaders["train"], ddp, optimizer, loss)
    assert epoch_metrics["count"] == D.padded_size(n_train)

    # Evaluation over the unpadded shards equals one process over the whole split.
    D.sync_buffers(model)
    whole = make_loader(loaders["valid"].dataset, 4, shuffle=False, distributed=False)
    assert whole.sampler.__class__.__name__ == "SequentialSampler"
    sharded = evaluate(loaders["valid"], model, loss, topk=2, return_predictions=True)
    single = evaluate(whole, model, loss, topk=2, return_predictions=True)  # every rank: the whole split
    n_valid = len(loaders["valid"].dataset)
    assert sharded["count"] == n_valid and single["count"] == 2 * n_valid  # the same photos summed twice
    for key in ("loss", "accuracy", "topk_accuracy"):
        assert abs(sharded[key] - single[key]) < 1e-6, (key, sharded[key], single[key])
    assert sharded["predictions"] == single["predictions"] and sharded["labels"] == single["labels"]

    # Feature cache: each rank extracts its block; all get every feature, in order; one file.
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())
    transfer = TransferModel(backbone, 8, 3, mean, std, "tinynet")
    cache = compute_feature_cache(transfer, data, img_size=32, n_views=2, seed=3, batch_size=8)
    assert not cache["from_cache"] and cache["path"].is_file()
    plain, aug = feature_transforms(32, mean, std)
    for split, samples, views in (("train", data.train, 2), ("valid", data.valid, 1), ("test", data.test, 1)):
        ref_feats, ref_labels = extract_features(backbone, samples, plain, aug, views, 8, 0, 3,
                                                 resize_size_for(32))
        feats, labels = cache[split]
        assert torch.equal(labels, ref_labels), split
        assert torch.allclose(feats, ref_feats.half().float(), atol=2e-3), (split, (feats - ref_feats).abs().max())
    again = compute_feature_cache(transfer, data, img_size=32, n_views=2, seed=3, batch_size=8)
    assert again["from_cache"] and torch.equal(again["train"][0], cache["train"][0])
    cache_files = sorted(p.name for p in cache["path"].parent.iterdir())

    # The head trains with DDP on the cached features like a model on photos.
    feature_loaders = get_feature_loaders(transfer, data, img_size=32, n_views=2, batch_size=4, workers=0, seed=3)
    assert isinstance(feature_loaders["test"].sampler, D.ShardSampler)
    head = D.wrap_ddp(transfer.head, "cpu")
    head_optimizer = get_optimizer(transfer.head, "adam", learning_rate=0.05)
    feature_loaders["train"].sampler.set_epoch(1)
    head_metrics = train_one_epoch(feature_loaders["train"], head, head_optimizer, loss)
    assert head_metrics["count"] == D.padded_size(len(data.train))
    assert same_everywhere(checksum(transfer.head))
    D.sync_buffers(transfer)
    test_sharded = evaluate(feature_loaders["test"], transfer.head, loss)
    test_whole = evaluate(make_loader(feature_loaders["test"].dataset, 4, False, distributed=False),
                          transfer.head, loss)
    assert abs(test_sharded["loss"] - test_whole["loss"]) < 1e-6 and test_sharded["count"] == len(data.test)

    report(folder, steps=steps, n_train=n_train, n_valid=n_valid, valid_loss=sharded["loss"],
           cache_files=cache_files)
    D.barrier()
    D.cleanup()
    return 0


def dist_backend() -> str:
    return torch.distributed.get_backend()


if __name__ == "__main__":
    mode, folder, *rest = sys.argv[1:]
    rest = rest[1:] if rest[:1] == ["--"] else rest
    if mode == "cli":
        sys.exit(run_cli(folder, rest))
    if mode == "die":
        sys.exit(die_in_epoch_2(rest))
    sys.exit(run_steps(folder, rest[0]))
