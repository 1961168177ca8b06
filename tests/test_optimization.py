"""Loss, optimizer and schedule factories, and that a few optimisation steps on real photos reduce the loss."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from src.data import get_data_loaders
from src.model import MyModel
from src.optimization import get_loss, get_optimizer, get_scheduler, steps_per_batch


def test_get_loss_is_cross_entropy_with_label_smoothing():
    loss = get_loss()
    assert isinstance(loss, nn.CrossEntropyLoss) and loss.label_smoothing == 0.0
    smooth = get_loss(label_smoothing=0.1)
    logits = torch.tensor([[10.0, -10.0, -10.0]])
    target = torch.tensor([0])
    # a confident right answer costs (almost) nothing without smoothing, and something with it
    assert loss(logits, target).item() < 1e-4
    assert smooth(logits, target).item() > 0.5


@pytest.mark.parametrize("name,cls", [("SGD", torch.optim.SGD), ("sgd", torch.optim.SGD), ("Adam", torch.optim.Adam),
                                      ("ADAM", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("AdamW", torch.optim.AdamW)])
def test_get_optimizer_names_are_case_insensitive(name, cls):
    opt = get_optimizer(MyModel(3), optimizer=name, learning_rate=0.02, momentum=0.7, weight_decay=1e-3)
    assert type(opt) is cls
    assert all(g["lr"] == 0.02 for g in opt.param_groups)
    if cls is torch.optim.SGD:
        assert opt.param_groups[0]["momentum"] == 0.7


def test_get_optimizer_defaults_match_the_course():
    opt = get_optimizer(MyModel(3))
    assert type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.5


def test_get_optimizer_rejects_unknown_names_listing_the_choices():
    with pytest.raises(ValueError, match="SGD, Adam, AdamW"):
        get_optimizer(MyModel(3), optimizer="rmsprop")


def test_get_optimizer_takes_only_trainable_parameters_and_spares_biases_from_decay():
    model = MyModel(3)
    for p in model.stem.parameters():
        p.requires_grad_(False)
    opt = get_optimizer(model, "adamw", weight_decay=0.05)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not ids & {id(p) for p in model.stem.parameters()}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    for g in opt.param_groups:
        assert g["weight_decay"] == (0.05 if all(p.ndim > 1 for p in g["params"]) else 0.0)


def test_get_optimizer_uses_the_models_own_param_groups():
    class TwoSpeed(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def param_groups(self, learning_rate):
            return [{"params": list(self.head.parameters()), "lr": learning_rate},
                    {"params": list(self.backbone.parameters()), "lr": learning_rate / 10}]

    model = TwoSpeed()
    opt = get_optimizer(model, "adam", learning_rate=1e-2)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.head.weight)] == pytest.approx(1e-2)
    assert lrs[id(model.backbone.weight)] == pytest.approx(1e-3)


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_schedule_warms_up_then_decays():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = get_scheduler("cosine", opt, epochs=10, steps_per_epoch=10, warmup_epochs=1)
    lrs = _lrs(sched, opt, 100)
    peak = lrs.index(max(lrs))
    assert 8 <= peak <= 11 and max(lrs) == pytest.approx(0.1, rel=0.02)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rising
    assert all(a >= b - 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then falling
    assert lrs[-1] < 0.002
    assert steps_per_batch(sched)


def test_onecycle_peaks_at_the_learning_rate():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = get_scheduler("OneCycle", opt, epochs=4, steps_per_epoch=25)
    lrs = _lrs(sched, opt, 100)
    assert max(lrs) == pytest.approx(3e-3, rel=0.01)
    assert lrs[0] < 3e-3 / 10 and lrs[-1] < 3e-3 / 100
    assert steps_per_batch(sched)


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5])
def test_onecycle_runs_on_very_short_trainings(total_steps):
    # OneCycleLR divides by zero when a phase has no step (2 or 4 steps at the default 25 % warmup)
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = get_scheduler("onecycle", opt, epochs=total_steps, steps_per_epoch=1)
    lrs = _lrs(sched, opt, total_steps)
    assert len(lrs) == total_steps and max(lrs) <= 3e-3 * 1.0001 and all(lr > 0 for lr in lrs)
    assert steps_per_batch(sched)


def test_plateau_reduces_after_patience_and_steps_per_epoch():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = get_scheduler("plateau", opt, epochs=10, steps_per_epoch=5, patience=1, factor=0.5)
    assert not steps_per_batch(sched)
    for _ in range(4):
        sched.step(1.0)  # no improvement
    assert opt.param_groups[0]["lr"] < 0.1


def test_no_scheduler_and_unknown_scheduler():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert get_scheduler("none", opt, 1, 1) is None and get_scheduler(None, opt, 1, 1) is None
    with pytest.raises(ValueError, match="cosine"):
        get_scheduler("step", opt, 1, 1)


def test_a_few_steps_on_real_photos_reduce_the_loss(tiny_dataset):
    torch.manual_seed(0)
    loaders = get_data_loaders(batch_size=8, num_workers=0, img_size=32, data_dir=tiny_dataset, augment="standard")
    images, labels = next(iter(loaders["train"]))
    model = MyModel(num_classes=3, dropout=0.0)
    loss = get_loss()
    optimizer = get_optimizer(model, "adamw", learning_rate=3e-3)
    model.eval()
    with torch.no_grad():
        before = loss(model(images), labels).item()
    model.train()
    for _ in range(8):
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            loss(model(x), y).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss(model(images), labels).item()
    assert after < before * 0.7, (before, after)
